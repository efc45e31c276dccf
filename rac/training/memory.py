"""The memory plan of a training stage (SFT, the joint objective): one worker's GPU
(:mod:`rac.models.memory` says how each figure is computed)."""

from __future__ import annotations

from typing import Any

from rac.models.memory import (
    ModelShape,
    StagePlan,
    activation_bytes,
    check_plan,
    fitting_changes,
    gpu_memory,
    lm_head_bytes,
    model_shape,
    model_states_bytes,
    planned_dtype,
    prefill_bytes,
    replace,
    weights_bytes,
)
from rac.training.config import TrainConfig
from rac.training.worker import weights_dtype


def training_items(cfg: TrainConfig, shape: ModelShape) -> list[tuple[str, int]]:
    """``(what, bytes)`` one training worker's GPU holds."""
    precision = planned_dtype(cfg.model.dtype, cfg.scaling.use_gpu, None)
    zero, workers = cfg.deepspeed.zero_stage, cfg.scaling.num_workers
    offload = {k: v != "none" for k, v in cfg.deepspeed.offload().items()}
    sharded = workers if zero == 3 else 1
    items: list[tuple[str, int]] = []
    lora = cfg.model.lora
    if lora.enabled:
        trainable = shape.lora_params(lora.target_modules, lora.r)
        largest = max((lora.r * max(i, o) for n, i, o, _ in shape.linears if n in lora.target_modules), default=0)
        base_dtype = weights_dtype(cfg, precision)
        frozen = 0 if zero == 3 and offload["param"] else weights_bytes(shape, base_dtype) // sharded
        items.append((f"frozen base ({base_dtype}{', ZeRO-3 shard' if zero == 3 else ''})", frozen))
    else:
        trainable, largest = shape.params, shape.largest_layer_params
    where = " + ".join(k for k, v in offload.items() if v)
    items.append((f"model states (DeepSpeed ZeRO-{zero} estimator, {trainable / 1e9:.2f}B trainable"
                  f"{', ' + where + ' offloaded' if where else ''})",
                  model_states_bytes(trainable, largest, zero, workers, offload["optimizer"], offload["param"])))
    rows = cfg.per_worker_batch_size * cfg.rows_per_example
    items.append((f"activations ({rows} rows x {cfg.max_length} tok, {precision}"
                  f"{', checkpointed' if cfg.gradient_checkpointing else ''})",
                  activation_bytes(shape, rows, cfg.max_length, precision, cfg.gradient_checkpointing,
                                   cfg.model.attn_implementation)))
    items.append(("LM head", lm_head_bytes(shape, rows * cfg.max_answer_tokens)))
    if cfg.holds_reference_model():
        items.append((f"reference model ({precision}{', ZeRO-3 shard' if zero == 3 else ''})",
                      weights_bytes(shape, precision) // sharded + prefill_bytes(shape, precision, rows,
                                                                                  cfg.max_length)))
    return items


def _candidates(cfg: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """Single changes that lower a worker's memory (each a valid config)."""
    out: list[tuple[str, TrainConfig]] = []
    zero3 = {"deepspeed.zero_stage": 3, "deepspeed.config": None}
    offload_opt = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}
    offload_all = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}, "offload_param": {"device": "cpu"}}}
    if not cfg.model.lora.enabled:
        out.append(("model.lora.enabled: true", replace(cfg, **{"model.lora.enabled": True})))
        if cfg.deepspeed.zero_stage != 3:
            out.append(("model.lora.enabled: true with deepspeed.zero_stage: 3",
                        replace(cfg, **{"model.lora.enabled": True, **zero3})))
    if cfg.deepspeed.zero_stage != 3:
        out.append(("deepspeed.zero_stage: 3", replace(cfg, **zero3)))
    out.append(("deepspeed.zero_stage: 3 with zero_optimization.offload_optimizer {device: cpu}",
                replace(cfg, **{**zero3, "deepspeed.config": offload_opt})))
    out.append(("deepspeed.zero_stage: 3 with offload_optimizer and offload_param {device: cpu}",
                replace(cfg, **{**zero3, "deepspeed.config": offload_all})))
    if not cfg.gradient_checkpointing:
        out.append(("gradient_checkpointing: true", replace(cfg, gradient_checkpointing=True)))
    batch = cfg.per_worker_batch_size
    while batch > 1:
        batch //= 2
        accumulation = cfg.gradient_accumulation_steps * cfg.per_worker_batch_size // batch
        out.append((f"per_worker_batch_size: {batch} with gradient_accumulation_steps: {accumulation} (the same "
                    f"global batch)", replace(cfg, per_worker_batch_size=batch,
                                              gradient_accumulation_steps=accumulation)))
    if cfg.deepspeed.zero_stage > 0:
        for more in (2, 4):
            n = cfg.scaling.num_workers * more
            out.append((f"scaling.num_workers: {n}", replace(cfg, **{"scaling.num_workers": n})))
    if planned_dtype(cfg.model.dtype, cfg.scaling.use_gpu, None) == "float32" and cfg.scaling.use_gpu:
        out.append(("model.dtype: bfloat16", replace(cfg, **{"model.dtype": "bfloat16"})))
    return out


def memory_plan(cfg: TrainConfig, shape: ModelShape | None = None, stage: str | None = None) -> StagePlan:
    """The memory plan of one training worker; ``shape`` defaults to ``cfg.model.path``'s config.json."""
    shape = shape or model_shape(cfg.model.path)
    gpu_gb, source = gpu_memory(cfg.scaling.gpu_memory_gb)
    zero = cfg.deepspeed.zero_stage
    plan = StagePlan(
        stage=stage or cfg.stage,
        runs_on=(f"{cfg.scaling.num_workers} {'GPU' if cfg.scaling.use_gpu else 'CPU'} workers, "
                 f"{'ZeRO-' + str(zero) if zero else 'DDP'}{', LoRA' if cfg.model.lora.enabled else ''}"),
        items=training_items(cfg, shape), use_gpu=cfg.scaling.use_gpu, gpu_gb=gpu_gb, gpu_source=source)
    if plan.checked and not plan.fits:
        def estimate(c: Any) -> int:
            return sum(b for _, b in training_items(c, shape))

        plan.suggestions = fitting_changes(estimate, cfg, plan.usable, _candidates(cfg), gpu_gb)
    return plan


def check_memory(cfg: TrainConfig) -> None:
    """The stage's memory check, on GPUs (:func:`rac.models.memory.check_plan`): its job's door runs it
    before any work (a refusal exits 2), and :func:`rac.training.trainer.preflight` again."""
    if cfg.scaling.use_gpu:
        check_plan(memory_plan(cfg), "scaling.gpu_memory_gb")
