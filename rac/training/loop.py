"""The per-worker training loop (Ray Train + DeepSpeed), shared by SFT and the joint objective.

Data order is a pure function of (seed, epoch): epoch ``e`` visits a permutation drawn
from ``seed + e`` in global batches of ``world * micro_batch * accumulation`` rows, and
each rank takes its micro-batches by position. A checkpoint stores the DeepSpeed state
(every rank its shard) and the global step, so a resumed run continues at the very next
batch (across epoch boundaries too) with the same optimizer, scheduler and RNG state.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from rac.models.factory import load_model, load_tokenizer
from rac.training.config import RACConfig, SFTConfig, TrainConfig
from rac.training.data import (
    holdout_by_topic,
    pad_batch,
    preference_examples,
    read_rows,
    sft_examples,
)
from rac.training.losses import completion_logps, rac_loss, sft_loss

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
DS_TAG = "deepspeed"
METRICS_FILE = "metrics.jsonl"
EXPORT_DIR = "model"
#: Each rank marks its part of a checkpoint complete with ``rank_done_<rank>``.
DONE_PREFIX = "rank_done_"


def training_rows(cfg: TrainConfig) -> list[dict[str, Any]]:
    """The rows a training config reads (checked in the driver, read again in each worker)."""
    if isinstance(cfg, RACConfig):
        return read_rows(cfg.input_dir, ["id", "query", "passages", "chosen", "rejected"])
    assert isinstance(cfg, SFTConfig)
    return read_rows(cfg.input_dir, ["id", "query", "passages", "question"], split=cfg.split)


def build_examples(cfg: TrainConfig, tokenizer: Any) -> tuple[list[dict], list[dict]]:
    rows = [r for r in training_rows(cfg) if r.get("question") or r.get("chosen")]
    train_rows, eval_rows = holdout_by_topic(rows, cfg.eval_fraction, cfg.seed)
    if isinstance(cfg, RACConfig):
        make = lambda rs: preference_examples(rs, tokenizer, cfg.max_length, cfg.max_answer_tokens)  # noqa: E731
    else:
        make = lambda rs: sft_examples(rs, tokenizer, cfg.grounded, cfg.max_length, cfg.max_answer_tokens)  # noqa: E731
    return make(train_rows), make(eval_rows)


def global_batch_size(cfg: TrainConfig) -> int:
    return cfg.scaling.num_workers * cfg.per_worker_batch_size * cfg.gradient_accumulation_steps


def schedule(cfg: TrainConfig, num_train: int) -> tuple[int, int]:
    """(steps per epoch, total steps). A last partial global batch is dropped so every rank
    runs the same number of micro-batches (collectives must line up)."""
    per_epoch = num_train // global_batch_size(cfg)
    total = cfg.max_steps if cfg.max_steps > 0 else per_epoch * cfg.num_epochs
    return per_epoch, total


def deepspeed_config(cfg: TrainConfig) -> dict[str, Any]:
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.per_worker_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": global_batch_size(cfg),
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage,
                              # ZeRO-3 exports must hold whole weights, not shards.
                              "stage3_gather_16bit_weights_on_model_save": True},
        # Our optimizer is torch's AdamW: DeepSpeed's FusedAdam would compile for a minute on CPU.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    if cfg.deepspeed.gradient_clipping > 0:
        ds["gradient_clipping"] = cfg.deepspeed.gradient_clipping
    if cfg.model.dtype == "bfloat16":
        ds["bf16"] = {"enabled": True}
    elif cfg.model.dtype == "float16":
        ds["fp16"] = {"enabled": True}
    return ds


class _Metrics:
    """Rank 0 writes metrics to the console, ``metrics.jsonl`` and the configured sinks."""

    def __init__(self, cfg: TrainConfig, rank: int):
        self.rank, self.path = rank, Path(cfg.output_dir) / METRICS_FILE
        self.writers: list[Any] = []
        if rank != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in cfg.report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("report_to: tensorboard needs its package: pip install tensorboard") from e
            self.writers.append(("tensorboard", SummaryWriter(str(Path(cfg.output_dir) / "tensorboard"))))
        if "mlflow" in cfg.report_to:
            try:
                import mlflow
            except ImportError as e:
                raise ImportError("report_to: mlflow needs the mlflow package: pip install mlflow") from e
            mlflow.start_run(run_name=cfg.run_name)
            self.writers.append(("mlflow", mlflow))

    def log(self, metrics: dict[str, float]) -> None:
        if self.rank != 0:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        logger.info("step %s: %s", metrics.get("step"),
                    " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "step" and isinstance(v, float)))
        for kind, writer in self.writers:
            numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
            if kind == "tensorboard":
                for k, v in numbers.items():
                    writer.add_scalar(k, v, metrics["step"])
            else:
                writer.log_metrics(numbers, step=int(metrics["step"]))


def _mean_across_ranks(values: dict[str, float], world: int) -> dict[str, float]:
    import torch
    import torch.distributed as dist

    if world == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist(), strict=True)}


class _Objective:
    """Loss of one micro-batch for SFT or the joint objective, with its logged terms."""

    def __init__(self, cfg: TrainConfig, pad_id: int, device: Any):
        self.cfg, self.pad_id, self.device = cfg, pad_id, device
        self.is_rac = isinstance(cfg, RACConfig)
        self.ref_logps: dict[str, tuple[float, float]] = {}
        self.ref_model: Any = None

    def _pairs_batch(self, examples: list[dict]) -> dict[str, Any]:
        # Chosen then rejected in one batch: one forward gives both, and the SFT term reuses
        # the chosen half of it.
        seqs = [e["chosen_input_ids"] for e in examples] + [e["rejected_input_ids"] for e in examples]
        labels = [e["chosen_labels"] for e in examples] + [e["rejected_labels"] for e in examples]
        return {k: v.to(self.device) for k, v in pad_batch(seqs, labels, self.pad_id).items()}

    def reference(self, model: Any, examples: list[dict]) -> tuple[Any, Any]:
        import torch

        if self.ref_model is None:
            chosen = torch.tensor([self.ref_logps[e["id"]][0] for e in examples], device=self.device)
            rejected = torch.tensor([self.ref_logps[e["id"]][1] for e in examples], device=self.device)
            return chosen, rejected
        batch = self._pairs_batch(examples)
        with torch.no_grad():
            logits = self.ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logps, _ = completion_logps(logits, batch["labels"])
        n = len(examples)
        return logps[:n], logps[n:]

    def __call__(self, model: Any, examples: list[dict]) -> dict[str, Any]:
        if not self.is_rac:
            seqs, labels = [e["input_ids"] for e in examples], [e["labels"] for e in examples]
            batch = {k: v.to(self.device) for k, v in pad_batch(seqs, labels, self.pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = sft_loss(logits, batch["labels"])
            return {"loss": loss}
        cfg = self.cfg
        assert isinstance(cfg, RACConfig)
        batch = self._pairs_batch(examples)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps, counts = completion_logps(logits, batch["labels"])
        n = len(examples)
        ref_chosen, ref_rejected = self.reference(model, examples)
        return rac_loss(logps[:n], logps[n:], ref_chosen, ref_rejected, counts[:n], cfg.gamma, cfg.beta)


def precompute_reference(model: Any, objective: _Objective, examples: list[dict], rank: int, world: int,
                         batch_size: int) -> dict[str, tuple[float, float]]:
    """Reference log-probs of every pair, computed once with the initial model (= p_theta0).

    Each rank scores a strided share; the shares are gathered so every rank holds all.
    """
    import torch
    import torch.distributed as dist

    mine = examples[rank::world]
    out: dict[str, tuple[float, float]] = {}
    model.eval()
    with torch.no_grad():
        for i in range(0, len(mine), batch_size):
            part = mine[i:i + batch_size]
            batch = objective._pairs_batch(part)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logps, _ = completion_logps(logits, batch["labels"])
            for j, e in enumerate(part):
                out[e["id"]] = (float(logps[j]), float(logps[len(part) + j]))
    model.train()
    if world > 1:
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, out)
        out = {k: v for part in gathered for k, v in part.items()}
    return out


def _micro_batches(examples: list[dict], order: list[int], step_in_epoch: int, cfg: TrainConfig, rank: int,
                   world: int) -> list[list[dict]]:
    """This rank's micro-batches of one optimizer step."""
    g, micro = global_batch_size(cfg), cfg.per_worker_batch_size
    start = step_in_epoch * g
    out = []
    for m in range(cfg.gradient_accumulation_steps):
        offset = start + (m * world + rank) * micro
        out.append([examples[i] for i in order[offset:offset + micro]])
    return out


def _evaluate(engine: Any, objective: _Objective, examples: list[dict], cfg: TrainConfig, rank: int,
              world: int) -> dict[str, float]:
    """Mean loss (and terms) over the held-out rows; every rank runs the same number of
    forwards (ZeRO-3 gathers parameters collectively), padding its share with repeats."""
    import torch

    if not examples:
        return {}
    per_rank = math.ceil(len(examples) / world)
    mine = examples[rank * per_rank:(rank + 1) * per_rank] or examples[:1]
    weights = [1.0] * len(mine)
    while len(mine) < per_rank:  # repeats that do not count
        mine.append(mine[0])
        weights.append(0.0)
    sums: dict[str, float] = {}
    engine.eval()
    with torch.no_grad():
        for i in range(0, per_rank, cfg.per_worker_batch_size):
            part, w = mine[i:i + cfg.per_worker_batch_size], weights[i:i + cfg.per_worker_batch_size]
            if sum(w) == 0:
                objective(engine, part)  # keep collectives in step
                continue
            real = [e for e, wt in zip(part, w, strict=True) if wt]
            terms = objective(engine, real)
            for k, v in terms.items():
                sums[f"eval_{k}"] = sums.get(f"eval_{k}", 0.0) + float(v) * len(real)
            sums["eval_rows"] = sums.get("eval_rows", 0.0) + len(real)
    engine.train()
    sums = {k: v * world for k, v in _mean_across_ranks(sums, world).items()}  # sums across ranks
    rows = sums.pop("eval_rows", 0.0)
    return {k: v / rows for k, v in sums.items()} if rows else {}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: ``{"cfg": SFTConfig | RACConfig}``."""
    import deepspeed
    import ray.train
    import torch
    from ray.train import Checkpoint

    cfg: TrainConfig = config["cfg"]
    # DeepSpeed's shared-memory comm op compiles for over a minute on first use; gloo is enough.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.path, padding_side="right")
    train_examples, eval_examples = build_examples(cfg, tokenizer)
    steps_per_epoch, total_steps = schedule(cfg, len(train_examples))
    model = load_model(cfg.model).to(device)
    model.config.use_cache = False

    objective = _Objective(cfg, tokenizer.pad_token_id, device)
    if isinstance(cfg, RACConfig):
        if cfg.precompute_ref_logps:
            objective.ref_logps = precompute_reference(model, objective, train_examples + eval_examples, rank, world,
                                                       cfg.per_worker_batch_size)
        else:
            objective.ref_model = copy.deepcopy(model).eval().requires_grad_(False)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    warmup = max(1, int(cfg.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup))))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg))

    global_step = 0
    resume_dir = latest_checkpoint(ray.train.get_checkpoint(), Path(config["storage_dir"]), world)
    if resume_dir is not None:
        engine.load_checkpoint(str(resume_dir), tag=DS_TAG)
        global_step = json.loads((resume_dir / STATE_FILE).read_text())["global_step"]
        logger.info("rank %d resumed from %s at step %d", rank, resume_dir, global_step)

    metrics_sink = _Metrics(cfg, rank)
    last_metrics: dict[str, Any] = {}
    while global_step < total_steps:
        epoch, step_in_epoch = divmod(global_step, steps_per_epoch)
        order = list(range(len(train_examples)))
        random.Random(cfg.seed + epoch).shuffle(order)
        # Dropout draws depend on (seed, step, rank) only, so a resumed step draws the same.
        torch.manual_seed(cfg.seed * 1_000_003 + global_step * world + rank)
        start = time.perf_counter()
        terms_sum: dict[str, float] = {}
        for micro in _micro_batches(train_examples, order, step_in_epoch, cfg, rank, world):
            terms = objective(engine, micro)
            engine.backward(terms["loss"])
            engine.step()
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach()) / cfg.gradient_accumulation_steps
        global_step += 1
        _maybe_inject_fault(config, cfg, global_step, rank)
        step_metrics = _mean_across_ranks(terms_sum, world)
        step_metrics.update(step=global_step, epoch=global_step / steps_per_epoch,
                            learning_rate=float(scheduler.get_last_lr()[0]), step_time_s=time.perf_counter() - start)
        final = global_step == total_steps
        if global_step % cfg.eval_steps == 0 or final:
            step_metrics.update(_evaluate(engine, objective, eval_examples, cfg, rank, world))
        last_metrics = step_metrics
        if global_step % cfg.logging_steps == 0 or final:
            metrics_sink.log(step_metrics)
        if global_step % cfg.save_steps == 0 or final:
            with tempfile.TemporaryDirectory() as tmp:
                engine.save_checkpoint(tmp, tag=DS_TAG)  # every rank writes its own shard
                (Path(tmp) / f"{DONE_PREFIX}{rank}").touch()
                if rank == 0:
                    (Path(tmp) / STATE_FILE).write_text(json.dumps({"global_step": global_step,
                                                                     "steps_per_epoch": steps_per_epoch}))
                ray.train.report(step_metrics, checkpoint=Checkpoint.from_directory(tmp))
        elif global_step % cfg.logging_steps == 0:
            ray.train.report(step_metrics)

    export_model(engine, tokenizer, Path(cfg.output_dir) / EXPORT_DIR, cfg, rank)
    if not last_metrics:  # resumed at the end: nothing left to train
        ray.train.report({"step": global_step})


def _checkpoint_step(path: Path, world: int) -> int:
    """The step of a complete checkpoint directory (every rank's part present), else -1."""
    state = path / STATE_FILE
    if not state.is_file() or not all((path / f"{DONE_PREFIX}{r}").is_file() for r in range(world)):
        return -1
    return int(json.loads(state.read_text())["global_step"])


def latest_checkpoint(reported: Any, storage_dir: Path, world: int) -> Path | None:
    """The checkpoint to resume from: the newest complete one.

    Ray Train hands back the latest checkpoint it registered; a checkpoint whose report was
    still in flight when a worker died is on storage but may not be registered, so the
    run's storage folder is scanned too (it is shared storage on a multi-node cluster).
    """
    candidates: list[Path] = []
    if reported is not None and Path(reported.path).is_dir():
        candidates.append(Path(reported.path))
    if storage_dir.is_dir():
        candidates += sorted(storage_dir.glob("checkpoint_*"))
    best = max(candidates, key=lambda p: _checkpoint_step(p, world), default=None)
    return best if best is not None and _checkpoint_step(best, world) > 0 else None


def _maybe_inject_fault(config: dict[str, Any], cfg: TrainConfig, step: int, rank: int) -> None:
    """Test hook: SIGKILL the last rank's process once, at ``config["kill_at_step"]``.

    A marker file in the output directory makes the fault happen on the first attempt only,
    as a real crash would.
    """
    kill_at = config.get("kill_at_step")
    marker = Path(cfg.output_dir) / "fault_injected"
    if kill_at == step and rank == cfg.scaling.num_workers - 1 and not marker.exists():
        import signal

        marker.touch()
        logger.warning("fault injection: killing rank %d at step %d", rank, step)
        os.kill(os.getpid(), signal.SIGKILL)


def export_model(engine: Any, tokenizer: Any, path: Path, cfg: TrainConfig, rank: int) -> None:
    """Save the trained model in Hugging Face format (ZeRO-3 weights gathered, LoRA merged)."""
    import deepspeed
    import torch.distributed as dist

    module = engine.module
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=cfg.deepspeed.zero_stage == 3):
        if rank == 0:
            to_save = module
            if cfg.model.lora.enabled:
                to_save = copy.deepcopy(module).merge_and_unload()
            tmp = path.with_name(path.name + ".tmp")
            to_save.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.padding_side = "left"
            tokenizer.save_pretrained(str(tmp))
            if path.exists():
                import shutil

                shutil.rmtree(path)
            os.replace(tmp, path)
    if dist.is_initialized():
        dist.barrier()
