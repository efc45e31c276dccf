"""What each Ray Train worker runs: TRL's ``SFTTrainer`` or ``DPOTrainer`` on the datasets
the driver tokenized once, reporting checkpoints to Ray Train, then the export.

Resume: Ray Train hands back the last checkpoint it registered; the run's storage is
also scanned for complete checkpoints (a report in flight when a worker died is on
storage but may not be registered). ``Trainer.train(resume_from_checkpoint=...)``
restores weights, optimizer, scheduler, RNG states and the step, and skips the batches
already seen; the batch order is a function of (seed, epoch), so a resumed run continues
with the very next batch, across epoch boundaries too.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rac.models.factory import load_model, load_tokenizer, peft_config, resolve_dtype, stored_dtype
from rac.models.prompts import write_prompt_format
from rac.placement import record_placement
from rac.training.checkpoints import checkpoint_step, latest_checkpoint
from rac.training.config import DATA_DIR, EXPORT_DIR, METRICS_FILE, TrainConfig
from rac.training.data import load_dataset_dir

logger = logging.getLogger(__name__)



def trainer_arguments(cfg: TrainConfig, local_dir: str, precision: str, has_eval: bool) -> Any:
    """TRL's training arguments of ``cfg``'s kind (``cfg.trl_config``), ``cfg.trainer_args`` passed through last."""
    import trl

    ds = cfg.deepspeed.merged()
    kwargs: dict[str, Any] = dict(
        output_dir=local_dir, run_name=cfg.run_name, per_device_train_batch_size=cfg.per_worker_batch_size,
        per_device_eval_batch_size=cfg.per_worker_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_ratio, lr_scheduler_type="linear",
        num_train_epochs=cfg.num_epochs, max_steps=cfg.max_steps, seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=cfg.logging_steps, eval_strategy="steps" if has_eval else "no", eval_steps=cfg.eval_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1,
        report_to=list(cfg.report_to) or "none", use_cpu=not cfg.scaling.use_gpu,
        bf16=precision == "bfloat16", fp16=precision == "float16",
        max_grad_norm=cfg.deepspeed.gradient_clipping,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        max_length=None,  # the driver fitted every prompt to cfg.max_length, trimming passages first
        deepspeed=ds, disable_tqdm=True,
        ddp_find_unused_parameters=False,  # every trained parameter gets a gradient; the search costs a pass
        activation_checkpointing=cfg.gradient_checkpointing,  # TRL's default is on; ours is the config's
    )
    if ds is not None:
        # Ray Train started the process group; accelerate's state was configured for it.
        kwargs["accelerator_config"] = {"use_configured_state": True}
    return getattr(trl, cfg.trl_config)(**{**kwargs, **cfg.trl_arguments(), **cfg.trainer_args})


def _configure_accelerate(cfg: TrainConfig) -> None:
    """With DeepSpeed, build accelerate's state for the process group Ray Train started.

    Left to itself, the Trainer would take the worker for a single process while DeepSpeed
    sees the whole group (and, on CPU, refuse it). DeepSpeed's shared-memory comm op would
    compile for over a minute on first use; gloo is enough on CPU.
    """
    if cfg.deepspeed.zero_stage == 0:
        return
    import deepspeed
    from accelerate import PartialState

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="nccl" if cfg.scaling.use_gpu else "gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]


def weights_dtype(cfg: TrainConfig, precision: str) -> str:
    """The dtype training loads the base weights in: the compute ``precision`` where the optimizer
    keeps no update in them (LoRA's frozen base; DeepSpeed, which holds its own float32 master
    copy), else float32 (the optimizer's master copy; bf16/fp16 then run as autocast)."""
    if cfg.model.lora.enabled or cfg.deepspeed.zero_stage > 0:
        return precision
    return "float32"


def build_trainer(cfg: TrainConfig, local_dir: str, callbacks: list[Any]) -> Any:
    """The TRL trainer of ``cfg`` on the tokenized datasets under ``<output_dir>/data``."""
    from transformers import PrinterCallback

    data = Path(cfg.output_dir) / DATA_DIR
    train, evaluation = load_dataset_dir(data / "train"), load_dataset_dir(data / "eval")
    precision = resolve_dtype(cfg.model.dtype, cfg.scaling.use_gpu)
    args = trainer_arguments(cfg, local_dir, precision, has_eval=evaluation is not None)
    tokenizer = load_tokenizer(cfg.model.path, padding_side="right", prompt_format=cfg.prompt_format())
    model = load_model(cfg.model.path, weights_dtype(cfg, precision), cfg.model.attn_implementation)
    model.config.use_cache = False
    trainer = cfg.trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                          processing_class=tokenizer, callbacks=callbacks,
                          peft_config=peft_config(cfg.model.lora) if cfg.model.lora.enabled else None)
    trainer.remove_callback(PrinterCallback)  # MetricsCallback logs each step to the console already
    return trainer


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: ``{"cfg", "storage": (filesystem, run path), "kill_at_step"}``."""
    import ray.train
    from pyarrow.fs import LocalFileSystem
    from ray.train.huggingface.transformers import RayTrainReportCallback

    from rac.training.engine import FaultInjectionCallback, MetricsCallback

    cfg: TrainConfig = config["cfg"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # transformers' sinks write beside the run's other outputs unless the user says otherwise.
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(cfg.output_dir) / "tensorboard"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", (Path(cfg.output_dir) / "mlruns").as_uri())
    _configure_accelerate(cfg)
    record_placement(cfg.output_dir, "train_worker")
    callbacks: list[Any] = [MetricsCallback(Path(cfg.output_dir) / METRICS_FILE), RayTrainReportCallback()]
    if config.get("kill_at_step"):
        callbacks.append(FaultInjectionCallback(config["kill_at_step"], rank, world - 1,
                                                Path(cfg.output_dir) / "fault_injected"))
    with tempfile.TemporaryDirectory(prefix=f"rac-{cfg.run_name}-rank{rank}-") as local_dir:
        trainer = build_trainer(cfg, local_dir, callbacks)
        fs, run_path = config["storage"]
        resume = latest_checkpoint(ray.train.get_checkpoint(), fs, run_path, world, local_dir)
        if resume is not None:
            logger.info("rank %d resumes from %s", rank, resume)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        export_model(trainer, cfg, Path(cfg.output_dir) / EXPORT_DIR, rank)
        if resume is not None and trainer.state.global_step == checkpoint_step(LocalFileSystem(), str(resume), world):
            ray.train.report({"step": trainer.state.global_step})  # resumed at the end: nothing left to train


def export_model(trainer: Any, cfg: TrainConfig, path: Path, rank: int) -> None:
    """Save the trained model in Hugging Face format, in the base model's dtype: ZeRO-3 weights
    gathered by the Trainer's ``save_model``, LoRA adapters merged into the base weights."""
    tmp = path.with_name(path.name + ".tmp")
    trainer.save_model(str(tmp))  # collective under DeepSpeed; rank 0 writes
    if rank == 0:
        dtype = stored_dtype(cfg.model.path)
        if cfg.model.lora.enabled:
            import torch
            from peft import PeftModel

            base = load_model(cfg.model.path, "float32")  # merged in float32, then stored as the base was
            merged = PeftModel.from_pretrained(base, str(tmp)).merge_and_unload()
            shutil.rmtree(tmp)
            merged.to(getattr(torch, dtype)).save_pretrained(str(tmp), safe_serialization=True)
        elif stored_dtype(tmp) != dtype:
            load_model(tmp, dtype).save_pretrained(str(tmp), safe_serialization=True)
        tokenizer = trainer.processing_class
        tokenizer.padding_side = "left"
        tokenizer.save_pretrained(str(tmp))
        write_prompt_format(tmp, cfg.prompt_format())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    trainer.accelerator.wait_for_everyone()
