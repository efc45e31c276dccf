"""Config of the study runner (``python -m jobs.experiment``): shared stage settings, the grid
of RAC variants, the seeds, the validation split and the selection rule."""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rac import layout
from rac.config import ActorPoolConfig, ConfigError, field_help, nested, refuse_wired_keys
from rac.data.config import DataConfig
from rac.decoding.config import NegativesConfig, SamplingParams
from rac.evaluation.catalogue import ROW_METRICS
from rac.evaluation.config import EvaluateConfig
from rac.models.factory import PACKAGED_MODEL_DIR
from rac.retrieval import RetrieverConfig
from rac.training.config import RACConfig, SFTConfig, check_trainer_args

if TYPE_CHECKING:
    from rac.pipeline import PipelineConfig

#: Keys a grid may vary, and the section each one sets.
VARIANT_KEYS = ("alpha", "gamma", "beta", "loss_type", "chosen_source")
#: Where C+ of a pair comes from: the gold question (the paper), or the grounded model's own
#: sample at alpha = 0 drawn with the same row seed (chosen and rejected then share one style).
CHOSEN_SOURCES = ("gold", "sample")
#: Keys of the stage sections the runner sets (the layout's, plus splits and seeds): a value
#: given there would be ignored, so it is refused.
WIRED_KEYS = layout.wired_keys(sft=("split",), negatives=("splits", "seed"), rac=("seed",), evaluate=("splits",))
#: Metrics selection may rank or guard on: those with a per-row score and corpus BLEU.
SELECTABLE = tuple(m for m in ROW_METRICS if m not in ("meteor", "entailment")) + ("bleu_corpus",)


@dataclass(frozen=True)
class Variant:
    """One RAC setting of the grid."""

    alpha: float
    gamma: float
    beta: float
    loss_type: str
    chosen_source: str

    @property
    def name(self) -> str:
        """System name: ``rac-a0.5-g0.5-b0.1-sigmoid-gold``."""
        return (f"rac-a{self.alpha:g}-g{self.gamma:g}-b{self.beta:g}-{self.loss_type}-{self.chosen_source}")


@dataclass
class ValidationConfig:
    """How the validation split is carved out of T1 and T2, and how T1/T2 are subsampled."""

    fraction: float = field_help(
        0.15, help="Share of the T1 topics and of the T2 topics moved to the validation split ('val'); those "
                   "rows train nothing. The test split is left as data.split_fractions made it.")
    max_rows: int | None = field_help(None, help="Validation rows kept at most (a seeded sample of them).")
    t1_rows: int | None = field_help(None, help="T1 rows kept at most for SFT (seeded sample; None: all).")
    t2_rows: int | None = field_help(None, help="T2 rows kept at most for negatives and the T2 training stages "
                                                "(seeded sample; None: all).")
    seed: int = field_help(0, help="Seed of the validation topics and of the row samples.")

    def __post_init__(self) -> None:
        if not 0 < self.fraction < 1:
            raise ConfigError(f"validation.fraction must be in (0, 1), got {self.fraction}")
        for key in ("max_rows", "t1_rows", "t2_rows"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"validation.{key} must be a positive number of rows or null, got {value}")


@dataclass
class SelectionConfig:
    """The rule that picks the RAC setting on validation (never on test)."""

    metric: str = field_help("parent_f1", help=f"Validation metric maximised (mean over seeds); one of "
                                               f"{list(SELECTABLE)}.")
    guard_metric: str = field_help("rouge_l", help="Metric a selected setting must keep close to grounded SFT's.")
    guard_tolerance: float = field_help(
        0.01, help="A setting qualifies when its validation guard_metric >= grounded SFT's minus this (0.01 = "
                   "1 ROUGE-L point). When none qualifies, the best by metric is taken and the results say so.")

    def __post_init__(self) -> None:
        for key in ("metric", "guard_metric"):
            if getattr(self, key) not in SELECTABLE:
                raise ConfigError(f"selection.{key} must be one of {list(SELECTABLE)}, got {getattr(self, key)!r}")
        if self.guard_tolerance < 0:
            raise ConfigError(f"selection.guard_tolerance must be >= 0, got {self.guard_tolerance}")


@dataclass
class ExperimentConfig:
    """``python -m jobs.experiment``: a study of RAC variants against the baselines, one resumable job.

    The grounded and ungrounded SFT models are trained once; negatives are decoded once per
    (alpha, seed) (and at alpha 0 for chosen_source 'sample'); each variant trains on them per
    seed; every system is evaluated on the validation split, the setting is selected there, and
    only the selected setting and the baselines are evaluated on test. The stage sections take
    every key of that stage's own config; paths that connect stages, the grid's keys and the
    seeds are set by the runner.
    """

    study_dir: str = field_help("outputs/experiments/demo", storage="path",
                                help="Directory of the study; every stage writes a "
                                     "subfolder, results.md and results.json go here.")
    base_model: str = field_help(PACKAGED_MODEL_DIR, storage="path",
                                 help="Model both SFT stages start from.")
    prepare_model: bool = field_help(True, help="Write the packaged SmolLM2 to base_model first when it is missing "
                                                "(jobs.prepare_model); false for a model of your own.")
    grid: dict[str, list[Any]] = field_help(
        {"alpha": [0.5], "gamma": [0.5], "chosen_source": ["gold"]},
        help=f"RAC variants: the product of the listed values of {list(VARIANT_KEYS)}; a key left out takes the "
             f"rac (or negatives.sampling) section's value, chosen_source 'gold'. chosen_source is one of "
             f"{list(CHOSEN_SOURCES)}.")
    seeds: list[int] = field_help([0], help="Seeds of the stochastic stages (negatives decoding, RAC and gamma = 0 "
                                            "training); every variant and T2 baseline runs once per seed.")
    validation: ValidationConfig = nested(ValidationConfig, "The validation split and T1/T2 subsampling.")
    selection: SelectionConfig = nested(SelectionConfig, "How the RAC setting is chosen on validation.")
    data: DataConfig = nested(DataConfig, "Records and corpus.")
    retriever: RetrieverConfig = nested(RetrieverConfig, "BM25 backend (the embedded index goes to "
                                                         "<study_dir>/index/bm25).")
    index_pool: ActorPoolConfig = nested(ActorPoolConfig, "Actor pool of Elasticsearch bulk indexing.")
    retrieve_pool: ActorPoolConfig = nested(ActorPoolConfig, "Actor pool of retrieval.")
    sft: SFTConfig = nested(SFTConfig, "Both SFT stages on T1.")
    negatives: NegativesConfig = nested(NegativesConfig, "Mixture decoding (sampling.alpha comes from the grid).")
    rac: RACConfig = nested(RACConfig, "The joint objective (gamma, beta, loss_type from the grid); its training "
                                       "settings also train the gamma = 0 baseline.")
    evaluate: EvaluateConfig = nested(EvaluateConfig, "Evaluation on validation and test (systems are set by "
                                                      "the runner).")

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds is empty; give at least one seed, e.g. [0]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must be distinct, got {self.seeds}")
        refuse_wired_keys(self, WIRED_KEYS, "the study runner (from study_dir, seeds and the stage it feeds)")
        if self.rac.trainer_args:
            try:
                check_trainer_args(self.rac.trainer_args, "SFTConfig")
            except ConfigError as e:
                raise ConfigError(f"rac.trainer_args also train the gamma = 0 baseline with TRL's SFTConfig: {e}") \
                    from None
        self.variants()  # the grid's errors now, before any stage runs
        self.pipeline_config()

    def pipeline_config(self) -> PipelineConfig:
        """The pipeline's own stages of the study (index, retrieve, prepare_model) into study_dir."""
        from rac.pipeline import PipelineConfig

        stages = ["index", "retrieve"] + (["prepare_model"] if self.prepare_model else [])
        return PipelineConfig(run_dir=self.study_dir, stages=stages, base_model=self.base_model, data=self.data,
                              retriever=self.retriever, index_pool=self.index_pool, retrieve_pool=self.retrieve_pool)

    def variants(self) -> list[Variant]:
        """The grid's variants in a fixed order (the product of the listed values)."""
        for key in self.grid:
            if key not in VARIANT_KEYS:
                close = difflib.get_close_matches(key, VARIANT_KEYS, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"unknown variant key 'grid.{key}'.{hint} Variant keys are {list(VARIANT_KEYS)}")
        empty = [k for k, v in self.grid.items() if not isinstance(v, list) or not v]
        if not self.grid or empty:
            raise ConfigError(f"the grid is empty{f' ({empty} list no values)' if empty else ''}; give each of "
                              f"its keys a list of at least one value, e.g. grid: {{alpha: [0.5], gamma: [0.5]}}")
        base = {"alpha": [self.negatives.sampling.alpha], "gamma": [self.rac.gamma], "beta": [self.rac.beta],
                "loss_type": [self.rac.loss_type], "chosen_source": ["gold"]}
        axes = [list(dict.fromkeys(self.grid.get(k, base[k]))) for k in VARIANT_KEYS]
        return [_variant(*values, rac=self.rac, sampling=self.negatives.sampling)
                for values in itertools.product(*axes)]


def _variant(alpha: Any, gamma: Any, beta: Any, loss_type: Any, chosen_source: Any, rac: RACConfig,
             sampling: SamplingParams) -> Variant:
    """A grid point, checked by the sections' own rules (gamma in [0, 1], a known loss, ...)."""
    if chosen_source not in CHOSEN_SOURCES:
        raise ConfigError(f"grid.chosen_source must be one of {list(CHOSEN_SOURCES)}, got {chosen_source!r}")
    for key, value in (("alpha", alpha), ("gamma", gamma), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"grid.{key} must list numbers, got {value!r}")
    try:
        dataclasses.replace(sampling, alpha=float(alpha))
        dataclasses.replace(rac, gamma=float(gamma), beta=float(beta), loss_type=str(loss_type))
    except ConfigError as e:
        raise ConfigError(f"grid: {e}") from None
    return Variant(float(alpha), float(gamma), float(beta), str(loss_type), str(chosen_source))
