"""Configs of the training stages: grounded/ungrounded SFT (steps 1-2) and the joint RAC
objective (step 4), run on Ray Train with DeepSpeed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rac.config import ConfigError, field_help, nested
from rac.models.factory import ModelConfig


@dataclass
class ScalingSection:
    """Ray Train workers and what each one reserves."""

    num_workers: int = field_help(2, help="Training workers (data-parallel ranks).")
    use_gpu: bool = field_help(False, help="One GPU per worker (NCCL); False trains on CPU (gloo).")
    cpus_per_worker: float = field_help(1.0, help="CPUs reserved per worker.")
    check_resources: bool = field_help(
        True, help="Refuse to start when the cluster cannot place the workers now (turn off on autoscaling "
                   "clusters that add nodes on demand).")

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"scaling.num_workers must be at least 1, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"scaling.cpus_per_worker must be > 0, got {self.cpus_per_worker}")


@dataclass
class DeepSpeedSection:
    """DeepSpeed ZeRO settings."""

    zero_stage: Literal[0, 1, 2, 3] = field_help(2, help="ZeRO stage (2: shard optimizer state and gradients; "
                                                         "3: also parameters).")
    gradient_clipping: float = field_help(1.0, help="Clip the global gradient norm to this value (0: off).")


@dataclass
class TrainConfig:
    """What SFT and the joint objective share."""

    input_dir: str = field_help("outputs/demo/retrieve", help="Directory of the stage output to train on.")
    output_dir: str = field_help("outputs/train", help="Checkpoints, metrics, the exported model, run info.")
    run_name: str = field_help("train", help="Ray Train run name; a run with the same name and output_dir "
                                             "resumes from its latest checkpoint.")
    model: ModelConfig = nested(ModelConfig, "Model to start from.")
    max_length: int = field_help(384, help="Tokens of prompt plus answer; passages are trimmed first.")
    max_answer_tokens: int = field_help(48, help="Tokens kept of an answer (question plus end of sequence).")
    learning_rate: float = field_help(5e-5, help="Peak learning rate (AdamW), linear warmup then decay.")
    weight_decay: float = field_help(0.0, help="AdamW weight decay.")
    warmup_ratio: float = field_help(0.05, help="Fraction of the steps spent warming up.")
    num_epochs: int = field_help(1, help="Passes over the training rows.")
    max_steps: int = field_help(-1, help="Optimizer steps; overrides num_epochs when > 0.")
    per_worker_batch_size: int = field_help(4, help="Rows per micro-batch on each worker.")
    gradient_accumulation_steps: int = field_help(1, help="Micro-batches per optimizer step.")
    eval_fraction: float = field_help(0.1, help="Fraction of the training topics held out for evaluation loss.")
    eval_steps: int = field_help(50, help="Evaluate every this many steps (and at the end).")
    save_steps: int = field_help(50, help="Checkpoint every this many steps (and at the end).")
    logging_steps: int = field_help(1, help="Log metrics every this many steps.")
    keep_checkpoints: int = field_help(2, help="Checkpoints kept on storage.")
    max_failures: int = field_help(1, help="Worker failures Ray Train recovers from (from the last checkpoint).")
    seed: int = field_help(0, help="Seed of initialisation order, data order and dropout.")
    report_to: list[str] = field_help([], help="Extra metric sinks: tensorboard, mlflow (each needs its package).")
    scaling: ScalingSection = nested(ScalingSection, "Workers and resources.")
    deepspeed: DeepSpeedSection = nested(DeepSpeedSection, "DeepSpeed ZeRO.")

    def __post_init__(self) -> None:
        if self.max_length <= self.max_answer_tokens:
            raise ConfigError(f"max_length ({self.max_length}) must exceed max_answer_tokens "
                              f"({self.max_answer_tokens}) to leave room for the prompt")
        for name in ("per_worker_batch_size", "gradient_accumulation_steps", "eval_steps", "save_steps",
                     "logging_steps", "num_epochs", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        unknown = set(self.report_to) - {"tensorboard", "mlflow"}
        if unknown:
            raise ConfigError(f"report_to accepts tensorboard and mlflow, got {sorted(unknown)}")


@dataclass
class SFTConfig(TrainConfig):
    """``python -m jobs.train_sft``: p_theta0 (grounded) or p_uncond (ungrounded) on T1."""

    grounded: bool = field_help(True, help="True trains p_theta0 on (query, passages); False p_uncond on the "
                                           "query alone.")
    split: str = field_help("t1", help="Split of the retrieved rows to train on.")


@dataclass
class RACConfig(TrainConfig):
    """``python -m jobs.train_rac``: L_RAC = gamma * L_DPO + (1 - gamma) * L_SFT on T2, from p_theta0."""

    gamma: float = field_help(0.5, help="Weight of the DPO term; 1 - gamma weighs the SFT term.")
    beta: float = field_help(0.1, help="DPO temperature beta.")
    precompute_ref_logps: bool = field_help(
        True, help="Compute the reference model's log-probs once before training instead of a second forward "
                   "every step (no reference model kept in memory).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
