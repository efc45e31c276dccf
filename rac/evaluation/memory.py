"""The memory plan of the evaluation stage: a generator actor holds one system's model and its KV
cache for ``pool.batch_size`` rows; a scorer actor holds the configured scorers' models
(:mod:`rac.models.memory` says how)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rac.evaluation.config import EvaluateConfig
from rac.models.memory import (
    DTYPE_BYTES,
    ModelShape,
    StagePlan,
    actors_per_gpu,
    check_plan,
    fitting_changes,
    gpu_memory,
    inference_candidates,
    inference_items,
    model_shape,
    planned_dtype,
    weights_bytes,
)


def _shapes(cfg: EvaluateConfig) -> list[ModelShape]:
    return [model_shape(s.path) for s in cfg.systems]


def generator_items(cfg: EvaluateConfig, shapes: list[ModelShape]) -> list[tuple[str, int]]:
    """``(what, bytes)`` one generator actor's GPU holds: the largest system's model and its KV cache."""
    use_gpu = cfg.pool.num_gpus > 0 and cfg.device != "cpu"
    best: list[tuple[str, int]] = []
    for shape in shapes:
        items = inference_items(shape, planned_dtype(cfg.dtype, use_gpu, shape.dtype), cfg.pool.batch_size,
                                cfg.max_prompt_tokens, cfg.max_new_tokens)
        if sum(b for _, b in items) > sum(b for _, b in best):
            best = items
    share = actors_per_gpu(cfg.pool.num_gpus)
    return [(f"{what} x {share} actors", b * share) for what, b in best] if share > 1 else best


def scorer_items(cfg: EvaluateConfig) -> list[tuple[str, int]]:
    """``(what, bytes)`` one scorer actor's GPU holds: the weights of every configured scorer model
    (one not yet made, such as a detector the run trains, is listed at 0)."""
    from rac.evaluation.scorers import resolve_embedding_model

    use_gpu = cfg.score_pool.num_gpus > 0 and cfg.device != "cpu"
    embedding = resolve_embedding_model(cfg.embedding_model)
    models = {"NLI model": cfg.nli_model, "embedding model": str(embedding) if embedding else None,
              "fluency LM": cfg.fluency_model, "detector": cfg.detector}
    items = []
    for what, path in models.items():
        if not path:
            continue
        if not (Path(path) / "config.json").is_file():
            items.append((f"{what} (no model at {path} yet: not counted)", 0))
            continue
        shape = model_shape(path)
        dtype = planned_dtype(cfg.dtype, use_gpu, shape.dtype)
        items.append((f"{what} ({shape.params / 1e6:.0f}M x {DTYPE_BYTES[dtype]} B)", weights_bytes(shape, dtype)))
    share = actors_per_gpu(cfg.score_pool.num_gpus)
    return [(f"{what} x {share} actors", b * share) for what, b in items] if share > 1 else items


def memory_plan(cfg: EvaluateConfig, shapes: list[ModelShape] | None = None,
                stage: str = "evaluate") -> list[StagePlan]:
    """The memory plans of a generator actor's GPU and, when scorer models are configured, a
    scorer actor's; ``shapes`` (one per system) default to the systems' config.json."""
    shapes = shapes if shapes is not None else _shapes(cfg)
    gpu_gb, source = gpu_memory(cfg.pool.gpu_memory_gb)
    plans = []
    if shapes:
        plan = StagePlan(stage=stage, runs_on=f"actors of {cfg.pool.num_gpus:g} GPU, {cfg.pool.batch_size} rows",
                         items=generator_items(cfg, shapes), use_gpu=cfg.pool.num_gpus > 0 and cfg.device != "cpu",
                         gpu_gb=gpu_gb, gpu_source=source)
        if plan.checked and not plan.fits:
            def estimate(c: Any) -> int:
                return sum(b for _, b in generator_items(c, shapes))

            candidates = inference_candidates(cfg, shapes[0].dtype, "pool.batch_size", cfg.pool.batch_size)
            plan.suggestions = fitting_changes(estimate, cfg, plan.usable, candidates, gpu_gb)
        plans.append(plan)
    scorers = scorer_items(cfg)
    if scorers:
        gpu_gb, source = gpu_memory(cfg.score_pool.gpu_memory_gb)
        plan = StagePlan(stage=f"{stage} (scorers)", runs_on=f"actors of {cfg.score_pool.num_gpus:g} GPU",
                         items=scorers, use_gpu=cfg.score_pool.num_gpus > 0 and cfg.device != "cpu",
                         gpu_gb=gpu_gb, gpu_source=source)
        if plan.checked and not plan.fits:
            plan.suggestions = fitting_changes(lambda c: sum(b for _, b in scorer_items(c)), cfg, plan.usable,
                                               [], gpu_gb)
        plans.append(plan)
    return plans


def check_memory(cfg: EvaluateConfig) -> None:
    """The stage's memory check, on GPUs: its job's door runs it before any work (a refusal exits 2),
    and :func:`rac.evaluation.stage.check_inputs` again."""
    if cfg.device != "cpu" and (cfg.pool.num_gpus > 0 or cfg.score_pool.num_gpus > 0):
        check_plan(memory_plan(cfg), "pool.gpu_memory_gb / score_pool.gpu_memory_gb")
