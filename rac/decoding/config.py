"""Config of the negatives stage (``python -m jobs.generate_negatives``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rac.config import ActorPoolConfig, ConfigError, field_help, nested
from rac.data.schema import SPLITS, check_splits
from rac.models.factory import (
    Attention,
    Device,
    Dtype,
    attention_field,
    check_attention,
    check_device,
    device_field,
    dtype_field,
)
from rac.models.generation import check_lengths, max_new_tokens_field, max_prompt_tokens_field


@dataclass
class SamplingParams:
    """How each token of a negative is drawn (Eq. 3): which model, then which token."""

    alpha: float = field_help(0.5, help="Mixing rate: probability that a token comes from the ungrounded model "
                                        "(a_t ~ Bernoulli(alpha)). 0 gives grounded questions, 1 ungrounded ones.")
    temperature: float = field_help(0.7, help="Softmax temperature (> 0), applied before top-k and top-p.")
    top_k: int = field_help(50, help="Sample among the k most likely tokens (0: no limit).")
    top_p: float = field_help(1.0, help="Nucleus sampling mass in (0, 1] (1: off).")
    max_new_tokens: int = max_new_tokens_field()
    do_sample: bool = field_help(True, help="False: argmax of the chosen model at each step (temperature, top-k "
                                            "and top-p unused); the Bernoulli draw still picks the model.")
    stop_at_question: bool = field_help(True, help="End a negative after the token that ends its first question "
                                                   "('?').")
    ignore_eos: bool = field_help(False, help="Keep generating past the end-of-sequence token (benchmarks of "
                                              "fixed length).")

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}; for argmax decoding set "
                              f"do_sample: false")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0: no limit), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        check_lengths(max_new_tokens=self.max_new_tokens)


@dataclass
class NegativesConfig:
    """``python -m jobs.generate_negatives``: unfaithful negatives C- by mixture decoding (Eq. 3)."""

    input_dir: str = field_help(
        "outputs/retrieve", storage="path",
        help="Output directory of the retrieval stage (its Parquet shards are in retrieved/).")
    output_dir: str = field_help(
        "outputs/negatives", storage="path", help="Where the T2 pairs (negatives/part-*.parquet) and run info go.")
    resume: bool = field_help(
        True, help="A rerun into the same output_dir skips the ids already written (made with the same settings "
                   "and models); false deletes them and starts over.")
    splits: list[str] = field_help(["t2"], help=f"Splits whose rows get a negative; any of {list(SPLITS)}.")
    grounded_model: str = field_help(
        "outputs/train/grounded/model", storage="path",
        help="p_theta0: model directory of the grounded SFT model (reads the "
             "passages); jobs.train_sft exports it to <output_dir>/model.")
    ungrounded_model: str = field_help(
        "outputs/train/ungrounded/model", storage="path",
        help="p_uncond: model directory of the ungrounded SFT model (query only). "
             "It must share the grounded model's tokenizer.")
    sampling: SamplingParams = nested(SamplingParams, "How each token is drawn: the mixing rate alpha and the "
                                                      "sampling settings.")
    max_prompt_tokens: int = max_prompt_tokens_field()
    retry_failed: bool = field_help(
        True, help="A rerun into the same output_dir decodes again the rows whose decoding raised "
                   "('generation failed: ...'); rows with input errors are kept as they are.")
    seed: int = field_help(0, help="Base seed; each row's seed is derived from it and the row id (SHA-256).")
    dtype: Dtype = dtype_field()
    device: Device = device_field()
    attn_implementation: Attention = attention_field()
    hash_weights: bool = field_help(True, help="Fingerprint the weights files (SHA-256) in the model revisions; "
                                               "false: use their sizes (faster on huge models).")
    pool: ActorPoolConfig = dataclasses.field(
        default_factory=lambda: ActorPoolConfig(min_size=1, max_size=2, batch_size=16),
        metadata={"help": "Actor pool of the decoders; pool.batch_size rows are decoded together. Each actor "
                          "holds both models."})

    def __post_init__(self) -> None:
        check_lengths(max_prompt_tokens=self.max_prompt_tokens)
        check_splits(self.splits)
        check_device(self.device, self.pool.num_gpus, "pool.num_gpus")
        check_attention(self.attn_implementation, "attn_implementation")
