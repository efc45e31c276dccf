"""Training on Ray Train + DeepSpeed: grounded/ungrounded SFT and the joint RAC objective."""

from rac.training.config import DeepSpeedSection, RACConfig, ScalingSection, SFTConfig, TrainConfig
from rac.training.losses import completion_logps, rac_loss, sft_loss
from rac.training.trainer import preflight, read_metrics, run_rac, run_sft, run_training

__all__ = ["DeepSpeedSection", "RACConfig", "SFTConfig", "ScalingSection", "TrainConfig", "completion_logps",
           "preflight", "rac_loss", "read_metrics", "run_rac", "run_sft", "run_training", "sft_loss"]
