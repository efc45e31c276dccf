"""The memory plan of the negatives stage: one actor holds both models (p_theta0 and p_uncond)
and their KV caches for ``pool.batch_size`` rows (:mod:`rac.models.memory` says how)."""

from __future__ import annotations

from typing import Any

from rac.decoding.config import NegativesConfig
from rac.models.memory import (
    DTYPE_BYTES,
    ModelShape,
    StagePlan,
    actors_per_gpu,
    check_plan,
    fitting_changes,
    gpu_memory,
    inference_candidates,
    kv_cache_bytes,
    model_shape,
    planned_dtype,
    prefill_bytes,
    replace,
    weights_bytes,
)


def check_memory(cfg: NegativesConfig) -> None:
    """The stage's memory check, on GPUs: its job's door runs it before any work (a refusal exits 2),
    and :func:`rac.decoding.stage.run_generate_negatives` again."""
    if uses_gpu(cfg):
        check_plan(memory_plan(cfg), "pool.gpu_memory_gb")


def uses_gpu(cfg: NegativesConfig) -> bool:
    return cfg.pool.num_gpus > 0 and cfg.device != "cpu"


def negatives_items(cfg: NegativesConfig, grounded: ModelShape, ungrounded: ModelShape) -> list[tuple[str, int]]:
    """``(what, bytes)`` one GPU holds: both models, their KV caches, the larger prefill, times the
    actors that share the GPU."""
    rows, prompt = cfg.pool.batch_size, cfg.max_prompt_tokens
    tokens = prompt + cfg.sampling.max_new_tokens
    items, prefills = [], []
    for label, shape in (("grounded", grounded), ("ungrounded", ungrounded)):
        dtype = planned_dtype(cfg.dtype, uses_gpu(cfg), shape.dtype)
        items.append((f"{label} weights ({shape.params / 1e9:.2f}B x {DTYPE_BYTES[dtype]} B, {dtype})",
                      weights_bytes(shape, dtype)))
        items.append((f"{label} KV cache ({rows} x {tokens} tok)", kv_cache_bytes(shape, dtype, rows, tokens)))
        prefills.append(prefill_bytes(shape, dtype, rows, prompt))
    items.append(("prefill", max(prefills)))  # the two prefills run one after the other
    share = actors_per_gpu(cfg.pool.num_gpus)
    if share > 1:
        items = [(f"{what} x {share} actors", b * share) for what, b in items]
    return items


def memory_plan(cfg: NegativesConfig, grounded: ModelShape | None = None, ungrounded: ModelShape | None = None,
                stage: str = "negatives") -> StagePlan:
    """The memory plan of one negatives actor's GPU; shapes default to the models' config.json."""
    grounded = grounded or model_shape(cfg.grounded_model)
    ungrounded = ungrounded or model_shape(cfg.ungrounded_model)
    gpu_gb, source = gpu_memory(cfg.pool.gpu_memory_gb)
    plan = StagePlan(stage=stage, runs_on=f"actors of {cfg.pool.num_gpus:g} GPU, {cfg.pool.batch_size} rows, "
                                          f"2 models", items=negatives_items(cfg, grounded, ungrounded),
                     use_gpu=uses_gpu(cfg), gpu_gb=gpu_gb, gpu_source=source)
    if plan.checked and not plan.fits:
        def estimate(c: Any) -> int:
            return sum(b for _, b in negatives_items(c, grounded, ungrounded))

        candidates = inference_candidates(cfg, grounded.dtype, "pool.batch_size", cfg.pool.batch_size)
        if cfg.pool.num_gpus < 1:
            candidates.append(("pool.num_gpus: 1", replace(cfg, **{"pool.num_gpus": 1.0})))
        plan.suggestions = fitting_changes(estimate, cfg, plan.usable, candidates, gpu_gb)
    return plan
