"""TRL's trainers as this project runs them: four small extensions and the callbacks.

- Batches grouped by length (:class:`LengthGroupedSampler`): a batch holds rows of
  similar length, so little compute goes to padding; the order is a pure function of
  (seed, epoch), so a resumed run sees the very batches an uninterrupted one sees.
- Both trainers run the LM head on labelled tokens only, and the DPO trainer runs each
  pair's prompt once (:mod:`rac.training.forward`).
- :class:`RACDPOTrainer` takes the preference pairs as token ids (tokenized once by the
  driver, :mod:`rac.training.data`) and logs the two terms of the joint objective apart.
- :class:`MetricsCallback` writes every logged step to ``metrics.jsonl`` (rank 0), with
  the names of :data:`METRIC_NAMES`; :class:`FaultInjectionCallback` is a test hook.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from transformers import TrainerCallback
from trl import DPOTrainer, SFTTrainer

from rac.training.data import IGNORE_INDEX
from rac.training.forward import install_training_forward

logger = logging.getLogger(__name__)

#: TRL's log keys and the names this project logs them under (others keep TRL's name).
METRIC_NAMES = {
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
    "rewards/chosen": "chosen_reward",
    "rewards/rejected": "rejected_reward",
}


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Shuffled batches of rows of similar length, drawn from ``seed + epoch``.

    Rows are shuffled, sorted by length within windows of ``window`` batches, cut into
    batches of ``batch_size`` and the batches shuffled again, so an epoch's order is random
    at the batch level while each batch pads little.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 16):
        self.lengths, self.batch_size, self.seed, self.window = list(lengths), batch_size, seed, window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=gen).tolist()
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(perm), span):
            chunk = sorted(perm[start:start + span], key=lambda i: self.lengths[i])
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        order = torch.randperm(len(batches), generator=gen).tolist()
        return iter([i for b in order for i in batches[b]])


class _GroupedByLength:
    """Trainer mixin: the training sampler is :class:`LengthGroupedSampler` when the
    dataset has a ``length`` column and ``group_by_length`` is on (``train_sampling_strategy``)."""

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        # The dataloader's copy has lost the unused columns; the trainer's own still has ``length``.
        columns = self.train_dataset.column_names
        if self.args.train_sampling_strategy == "group_by_length" and "length" in columns:
            return LengthGroupedSampler(self.train_dataset["length"], self.args.per_device_train_batch_size,
                                        self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        # Evaluation order does not matter; transformers would group it by an ``input_ids`` column.
        return torch.utils.data.SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


class _TrainingForward:
    """Installs :func:`~rac.training.forward.install_training_forward` on the policy and the
    reference model, before TRL's reference pass (which runs inside ``DPOTrainer.__init__``)."""

    def __init__(self, *args: Any, share_prompt: bool = False, **kwargs: Any) -> None:
        self._share_prompt = share_prompt
        super().__init__(*args, **kwargs)
        self._install_training_forward()

    def _install_training_forward(self) -> None:
        policy = self.model.get_base_model() if is_peft_model(self.model) else self.model
        for model in (policy, getattr(self, "ref_model", None)):
            if model is not None:
                install_training_forward(model, self._share_prompt)

    def _precompute_ref_logps(self, *args: Any, **kwargs: Any) -> Any:
        self._install_training_forward()
        return super()._precompute_ref_logps(*args, **kwargs)


class RACSFTTrainer(_TrainingForward, _GroupedByLength, SFTTrainer):
    """TRL's ``SFTTrainer`` with length-grouped batches and the LM head on the question only."""


class RACDPOTrainer(_TrainingForward, _GroupedByLength, DPOTrainer):
    """TRL's ``DPOTrainer`` on pre-tokenized pairs, logging each term of a loss-type list.

    With ``loss_type=[<preference loss>, "sft"]`` and ``loss_weights=[gamma, 1 - gamma]``
    (the joint objective, Eq. RAC), TRL logs only their weighted sum. The SFT term is
    recomputed from the policy's token log-probs of the same forward (no extra forward),
    and the preference term follows from the sum: both are logged as ``sft_loss`` and
    ``pref_loss``.
    """

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
            return dataset  # tokenized once by the driver, with the project's prompts
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool) -> Any:
        if "sft" not in self.loss_types:
            return super()._compute_loss(model, inputs, return_outputs)
        captured: dict[str, Any] = {}

        def first_forward(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
            # The policy's forward comes first in TRL's loss; a reference forward may follow.
            if "log_probs" not in captured:
                captured["log_probs"], captured["labels"] = output.log_probs, kwargs["labels"]

        handle = self.accelerator.unwrap_model(model).register_forward_hook(first_forward, with_kwargs=True)
        try:
            result = super()._compute_loss(model, inputs, return_outputs)
        finally:
            handle.remove()
        loss = result[0] if return_outputs else result
        with torch.no_grad():
            mask = captured["labels"][:, 1:] != IGNORE_INDEX
            log_probs = captured["log_probs"][:, -mask.size(1):]
            half = mask.size(0) // 2  # batch is [chosen, rejected]
            sft = -log_probs[:half][mask[:half]].mean()
            weights = dict(zip(self.loss_types, self.loss_weights, strict=True))
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["sft_loss"].append(self.accelerator.gather_for_metrics(sft.detach()).mean().item())
            pref_weight = sum(w for t, w in weights.items() if t != "sft")
            if pref_weight > 0:
                pref = (loss.detach() - weights["sft"] * sft) / pref_weight
                self._metrics[mode]["pref_loss"].append(self.accelerator.gather_for_metrics(pref).mean().item())
        return result


class MetricsCallback(TrainerCallback):
    """Rank 0 appends each logged step to ``metrics.jsonl``: ``step``, ``epoch``,
    ``learning_rate``, ``loss`` and the terms, ``step_time_s``, and ``eval_*`` after an
    evaluation. On resume, lines past the checkpoint's step are dropped first, so the file
    holds each step of the run's history exactly once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._step_start = 0.0
        self._step_time = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= state.global_step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_time = time.perf_counter() - self._step_start

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs or "train_runtime" in logs:
            return  # the end-of-training summary repeats what the steps logged
        record: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch}
        for key, value in logs.items():
            if isinstance(value, (int, float)) and key != "epoch":
                prefix = "eval_" if key.startswith("eval_") else ""
                name = key[len(prefix):]
                record[prefix + METRIC_NAMES.get(name, name)] = float(value)
        if "loss" in record:
            record["step_time_s"] = self._step_time
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        logger.info("step %d: %s", state.global_step,
                    " ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("step", "epoch")))


def merge_metric_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step: a training log and the evaluation logged at the same step merged."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in lines:
        by_step.setdefault(int(line["step"]), {}).update(line)
    return [by_step[s] for s in sorted(by_step)]


class FaultInjectionCallback(TrainerCallback):
    """Test hook: SIGKILL the last rank once, right after optimizer step ``kill_at_step``.

    A marker file makes the fault happen on the first attempt only, as a real crash would.
    """

    def __init__(self, kill_at_step: int, rank: int, last_rank: int, marker: Path):
        self.kill_at_step, self.rank, self.last_rank, self.marker = kill_at_step, rank, last_rank, marker

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.kill_at_step and self.rank == self.last_rank and not self.marker.exists():
            self.marker.touch()
            logger.warning("fault injection: killing rank %d at step %d", self.rank, state.global_step)
            os.kill(os.getpid(), signal.SIGKILL)
