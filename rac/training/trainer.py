"""Driver side of training: check everything that can be checked before a worker starts,
tokenize the rows once into datasets on the run's storage, then run TRL's trainer on Ray
Train (``TorchTrainer``) with checkpoints that resume."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from rac.config import ConfigError, write_run_info
from rac.failures import StageResult
from rac.models.factory import load_tokenizer, warn_slow_bf16
from rac.storage import resolve_storage, storage_root
from rac.training.checkpoints import checkpoint_storage
from rac.training.config import DATA_DIR, EXPORT_DIR, METRICS_FILE, RACConfig, ScalingSection, SFTConfig, TrainConfig
from rac.training.data import holdout_by_topic, write_dataset
from rac.training.memory import check_memory

logger = logging.getLogger(__name__)


def check_resources(cfg: TrainConfig) -> None:
    """Refuse a scaling config the running cluster cannot place right now."""
    import ray

    if not cfg.scaling.check_resources:
        return
    total = ray.cluster_resources()
    need_cpu = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    if need_cpu > total.get("CPU", 0):
        raise ConfigError(
            f"scaling asks for {cfg.scaling.num_workers} workers x {cfg.scaling.cpus_per_worker:g} CPU = {need_cpu:g} "
            f"CPUs, the cluster has {total.get('CPU', 0):g}; lower scaling.num_workers or cpus_per_worker "
            f"(or set scaling.check_resources: false on an autoscaling cluster)")
    if cfg.scaling.use_gpu and cfg.scaling.num_workers > total.get("GPU", 0):
        raise ConfigError(f"scaling asks for {cfg.scaling.num_workers} GPUs, the cluster has {total.get('GPU', 0):g}; "
                          f"lower scaling.num_workers or set scaling.use_gpu: false")


def global_batch_size(cfg: TrainConfig) -> int:
    return cfg.scaling.num_workers * cfg.per_worker_batch_size * cfg.gradient_accumulation_steps


def steps_per_epoch(cfg: TrainConfig, num_train: int) -> int:
    """Optimizer steps in one pass over ``num_train`` rows (transformers' Trainer: every rank
    gets ceil(rows / (workers x batch)) micro-batches; a last partial step still counts)."""
    micro = -(-num_train // (cfg.scaling.num_workers * cfg.per_worker_batch_size))
    return -(-micro // cfg.gradient_accumulation_steps)


def build_datasets(cfg: TrainConfig, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Tokenize ``rows`` (``cfg.read_rows()``) once into ``<output_dir>/data/{train,eval}``;
    returns row counts.

    Eval rows are held out by topic (``eval_fraction``); the workers read these datasets.
    """
    tokenizer = load_tokenizer(cfg.model.path, padding_side="right", prompt_format=cfg.prompt_format())
    train_rows, eval_rows = holdout_by_topic(rows, cfg.eval_fraction, cfg.seed)
    data = Path(cfg.output_dir) / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    write_dataset(cfg.examples(train_rows, tokenizer), data / "train")
    if eval_rows:
        write_dataset(cfg.examples(eval_rows, tokenizer), data / "eval")
    else:
        import shutil

        shutil.rmtree(data / "eval", ignore_errors=True)
    return {"train": len(train_rows), "eval": len(eval_rows)}


def preflight(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Every check that needs no worker: model, the memory plan on GPUs, data and its columns, batch,
    resources, and a warning where ``model.dtype`` asks for bf16 on a CPU without it (the run proceeds).

    Returns the usable training rows (read once; :func:`build_datasets` tokenizes them).
    """
    cfg.model.check_exists()
    check_memory(cfg)
    warn_slow_bf16(cfg.model.dtype, cfg.scaling.use_gpu)
    rows = cfg.read_rows()
    if len(rows) < global_batch_size(cfg):
        raise ConfigError(f"{len(rows)} training rows in {cfg.input_dir}, fewer than one global batch "
                          f"({global_batch_size(cfg)} = workers x per_worker_batch_size x accumulation); "
                          f"lower per_worker_batch_size or scaling.num_workers")
    check_resources(cfg)
    return rows


def run_training(cfg: TrainConfig, kill_at_step: int | None = None) -> StageResult:
    """Train as ``cfg`` says (SFT or the joint objective); returns a summary.

    ``kill_at_step`` is a test hook: one worker is killed (SIGKILL) once at that step.

    Outputs in ``cfg.output_dir``: ``model/`` (Hugging Face format), ``metrics.jsonl``,
    ``ray/<run_name>/`` (Ray Train checkpoints, unless ``checkpoint_storage`` puts them
    elsewhere), ``config.yaml`` and ``run_info.json``.
    """
    from ray.train import CheckpointConfig, FailureConfig

    from rac.training.worker import train_loop_per_worker

    cfg = resolve_storage(copy.deepcopy(cfg), storage_root())  # workers never resolve a relative path
    usable = preflight(cfg)
    rows = len(usable)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = cfg.stage
    counts = build_datasets(cfg, usable)
    write_run_info(out, stage, cfg, rows=rows, examples=counts)
    fs, storage_path = checkpoint_storage(cfg)
    result = launch(train_loop_per_worker, {"cfg": cfg, "kill_at_step": kill_at_step,
                                            "storage": (fs, f"{storage_path}/{cfg.run_name}")},
                    cfg.run_name, cfg.scaling, storage_path, storage_filesystem=fs,
                    checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
                    failure_config=FailureConfig(max_failures=cfg.max_failures))
    trained = StageResult(stage, rows_in=rows, details={
        "model_dir": str(out / EXPORT_DIR), "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "final_metrics": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float))}})
    write_run_info(out, stage, cfg, rows=rows, result=trained.to_dict())
    return trained


def launch(train_loop: Any, loop_config: dict[str, Any], run_name: str, scaling: ScalingSection, storage_path: str,
           what: str = "training", **run_config: Any) -> Any:
    """Run ``train_loop`` on Ray Train's ``TorchTrainer`` with ``scaling``'s workers (gloo on CPU,
    NCCL on GPUs); the one launch of every training stage (SFT, the joint objective, the detector).

    ``run_config`` adds to Ray Train's ``RunConfig`` (a checkpoint config, a failure config, a
    storage filesystem). Returns Ray Train's result; raises ``RuntimeError`` naming ``what`` when
    the run failed.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_loop, train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker={"CPU": scaling.cpus_per_worker}),
        run_config=RunConfig(name=run_name, storage_path=storage_path, **run_config))
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"{what} failed: {result.error}") from result.error
    return result


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """The metrics a run logged, one record per step (training terms and evaluation merged)."""
    from rac.training.engine import merge_metric_lines

    path = Path(output_dir) / METRICS_FILE
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return merge_metric_lines(lines)


def run_sft(cfg: SFTConfig) -> StageResult:
    """Step 1 (grounded, p_theta0) or step 2 (ungrounded, p_uncond) of the method."""
    return run_training(cfg)


def run_rac(cfg: RACConfig) -> StageResult:
    """Step 4 of the method: the joint objective on T2, starting from p_theta0."""
    return run_training(cfg)
