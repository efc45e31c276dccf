"""The memory plan of a generator replica: one model and its KV cache for ``generator.max_batch_size``
prompts of ``generator.max_prompt_tokens`` plus the largest ``max_new_tokens`` a request may ask
(``limits.max_new_tokens``) (:mod:`rac.models.memory` says how)."""

from __future__ import annotations

from typing import Any

from rac.models.memory import (
    ModelShape,
    StagePlan,
    actors_per_gpu,
    fitting_changes,
    gpu_memory,
    inference_candidates,
    inference_items,
    model_shape,
    planned_dtype,
)
from rac.serving.config import ServeConfig


def uses_gpu(cfg: ServeConfig) -> bool:
    return cfg.generator.deployment.num_gpus > 0 and cfg.device != "cpu"


def replica_items(cfg: ServeConfig, shape: ModelShape) -> list[tuple[str, int]]:
    """``(what, bytes)`` one generator replica's GPU holds (times the replicas that share it)."""
    g = cfg.generator
    items = inference_items(shape, planned_dtype(cfg.dtype, uses_gpu(cfg), shape.dtype), g.max_batch_size,
                            g.max_prompt_tokens, cfg.limits.max_new_tokens)
    share = actors_per_gpu(g.deployment.num_gpus)
    return [(f"{what} x {share} replicas", b * share) for what, b in items] if share > 1 else items


def memory_plan(cfg: ServeConfig, shape: ModelShape | None = None, stage: str = "serve") -> StagePlan:
    """The memory plan of one generator replica's GPU; ``shape`` defaults to ``model_path``'s config.json."""
    shape = shape or model_shape(cfg.model_path)
    d = cfg.generator.deployment
    gpu_gb, source = gpu_memory(d.gpu_memory_gb)
    plan = StagePlan(stage=stage, runs_on=f"replicas of {d.num_gpus:g} GPU, batches of {cfg.generator.max_batch_size}",
                     items=replica_items(cfg, shape), use_gpu=uses_gpu(cfg), gpu_gb=gpu_gb, gpu_source=source)
    if plan.checked and not plan.fits:
        def estimate(c: Any) -> int:
            return sum(b for _, b in replica_items(c, shape))

        candidates = inference_candidates(cfg, shape.dtype, "generator.max_batch_size",
                                          cfg.generator.max_batch_size)
        plan.suggestions = fitting_changes(estimate, cfg, plan.usable, candidates, gpu_gb)
    return plan
