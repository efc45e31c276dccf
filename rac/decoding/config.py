"""Config of the negatives stage (``python -m jobs.generate_negatives``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from rac.config import ActorPoolConfig, ConfigError, field_help
from rac.data.schema import SPLITS


@dataclass
class SamplingParams:
    """How each token is drawn from the chosen model's distribution.

    Parameters
    ----------
    alpha
        Probability that a token comes from the ungrounded model (a_t ~ Bernoulli(alpha)).
    temperature
        Softmax temperature (> 0), applied before top-k and top-p.
    top_k
        Keep the k most likely tokens (0: no limit).
    top_p
        Keep the smallest set of most likely tokens whose mass reaches top_p (1: no limit).
    max_new_tokens
        Tokens generated at most per row.
    do_sample
        False: take the argmax of the chosen model (temperature, top-k, top-p unused); the
        Bernoulli draw still decides which model.
    stop_at_question
        Stop a row after the token that ends its first question ('?').
    ignore_eos
        Keep generating past the end-of-sequence token (for benchmarks of fixed length).
    """

    alpha: float = 0.5
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: int = 32
    do_sample: bool = True
    stop_at_question: bool = True
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}; for argmax decoding set "
                             f"do_sample: false")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: no limit), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


@dataclass
class NegativesConfig:
    """``python -m jobs.generate_negatives``: unfaithful negatives C- by mixture decoding (Eq. 3)."""

    input_dir: str = field_help(
        "outputs/retrieve", help="Output directory of the retrieval stage (its Parquet shards are in retrieved/).")
    output_dir: str = field_help(
        "outputs/negatives", help="Where the T2 pairs (negatives/part-*.parquet) and run info go.")
    resume: bool = field_help(
        True, help="A rerun into the same output_dir skips the ids already written (made with the same settings "
                   "and models); false deletes them and starts over.")
    splits: list[str] = field_help(["t2"], help=f"Splits whose rows get a negative; any of {list(SPLITS)}.")
    grounded_model: str = field_help(
        "outputs/train/grounded/model", help="p_theta0: model directory of the grounded SFT model (reads the "
                                             "passages); jobs.train_sft exports it to <output_dir>/model.")
    ungrounded_model: str = field_help(
        "outputs/train/ungrounded/model", help="p_uncond: model directory of the ungrounded SFT model (query only). "
                                       "It must share the grounded model's tokenizer.")
    alpha: float = field_help(0.5, help="Mixing rate: probability that a token comes from the ungrounded model. "
                                        "0 gives grounded questions, 1 ungrounded ones.")
    temperature: float = field_help(0.7, help="Sampling temperature (> 0).")
    top_k: int = field_help(50, help="Sample among the k most likely tokens (0: no limit).")
    top_p: float = field_help(1.0, help="Nucleus sampling mass in (0, 1] (1: off).")
    do_sample: bool = field_help(True, help="False: argmax of the chosen model at each step (for checks).")
    max_new_tokens: int = field_help(32, help="Tokens generated at most per question.")
    max_prompt_tokens: int = field_help(
        512, help="Token budget of each prompt; passages are trimmed to fit (rac.models.build_prompt).")
    stop_at_question: bool = field_help(True, help="End a negative after its first question mark.")
    retry_failed: bool = field_help(
        True, help="A rerun into the same output_dir decodes again the rows whose decoding raised "
                   "('generation failed: ...'); rows with input errors are kept as they are.")
    seed: int = field_help(0, help="Base seed; each row's seed is derived from it and the row id (SHA-256).")
    dtype: Literal["float32", "bfloat16", "float16"] = field_help(
        "float32", help="Weights dtype (float32 on CPU; bfloat16 on recent GPUs).")
    device: Literal["auto", "cpu", "cuda"] = field_help(
        "auto", help="auto: cuda when pool.num_gpus > 0 and a GPU is visible, else cpu.")
    hash_weights: bool = field_help(True, help="Fingerprint the weights files (SHA-256) in the model revisions; "
                                               "false: use their sizes (faster on huge models).")
    pool: ActorPoolConfig = dataclasses.field(
        default_factory=lambda: ActorPoolConfig(min_size=1, max_size=2, batch_size=16),
        metadata={"help": "Actor pool of the decoders; pool.batch_size rows are decoded together. Each actor "
                          "holds both models."})

    def __post_init__(self) -> None:
        try:
            self.sampling_params()  # the sampling settings are checked where they are defined
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.max_prompt_tokens < 16:
            raise ConfigError(f"max_prompt_tokens must be at least 16, got {self.max_prompt_tokens}")
        if not self.splits:
            raise ConfigError(f"splits must name at least one of {list(SPLITS)}")
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown:
            raise ConfigError(f"unknown split(s) {unknown}; splits are {list(SPLITS)}")

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(alpha=self.alpha, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                              stop_at_question=self.stop_at_question)
