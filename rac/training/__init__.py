"""Training with TRL's trainers on Ray Train: grounded/ungrounded SFT and the joint RAC objective."""

from rac.training.config import DeepSpeedSection, RACConfig, ScalingSection, SFTConfig, TrainConfig
from rac.training.trainer import preflight, read_metrics, run_rac, run_sft, run_training

__all__ = ["DeepSpeedSection", "RACConfig", "SFTConfig", "ScalingSection", "TrainConfig", "preflight",
           "read_metrics", "run_rac", "run_sft", "run_training"]
