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
from rac.evaluation.catalogue import FAITHFULNESS_METRICS, ROW_METRICS
from rac.evaluation.config import EvaluateConfig
from rac.models.factory import PACKAGED_MODEL_DIR
from rac.retrieval import RetrieverConfig
from rac.training.config import RACConfig, SFTConfig, check_trainer_args

if TYPE_CHECKING:
    from rac.pipeline import PipelineConfig

#: Where C+ of a pair comes from: the gold question (the paper); the grounded model's own sample at
#: alpha = 0 drawn with the same row seed (chosen and rejected then share one style); or the most
#: grounded of n such samples by ``pairs.score`` (the method's reference code filters its SFT
#: outputs with a judge, to the same end: a C+ that is grounded).
CHOSEN_SOURCES = ("gold", "sample", "best_of_n")
#: Scores that may rank candidates and filter pairs: the faithfulness scores of the evaluation.
PAIR_SCORES = FAITHFULNESS_METRICS
#: Short names of the scores in variant and stage names.
SCORE_TAGS = {"parent_precision": "pp", "parent_recall": "pr", "parent_f1": "pf1", "entailment": "nli",
              "semantic_support": "sem"}
#: The score a results page sets beside the one that built the pairs: the other family (lexical
#: PARENT-G against embedding-based semantic support), so a gain on the build score alone shows.
CHECK_SCORE = {"parent_precision": "semantic_support", "parent_recall": "semantic_support",
               "parent_f1": "semantic_support", "entailment": "parent_f1", "semantic_support": "parent_f1"}
#: Keys a grid may vary: the RAC objective's, and those of the pairs section (dotted).
PAIR_KEYS = ("chosen", "n", "score", "min_margin", "gold_min_recall")
VARIANT_KEYS = ("alpha", "gamma", "beta", "loss_type", *(f"pairs.{k}" for k in PAIR_KEYS))
#: Keys that were renamed, and their names now.
RENAMED = {"chosen_source": "pairs.chosen"}
#: SFT models that may be trained once per seed (sft_per_seed).
SFT_KINDS = ("grounded", "ungrounded")
#: Keys of the stage sections the runner sets (the layout's, plus splits and seeds): a value
#: given there would be ignored, so it is refused.
WIRED_KEYS = layout.wired_keys(sft=("split",), negatives=("splits", "seed"), rac=("seed",), evaluate=("splits",))
#: Metrics selection may rank or guard on: those with a per-row score and corpus BLEU.
SELECTABLE = tuple(m for m in ROW_METRICS if m not in ("meteor", "entailment")) + ("bleu_corpus",)


@dataclass(frozen=True)
class PairsConfig:
    """How each T2 pair (C+, C-) is built: where C+ comes from, and which pairs are kept."""

    chosen: str = field_help("gold", help=f"Where C+ comes from, one of {list(CHOSEN_SOURCES)}: the gold question; "
                                          f"the grounded model's own sample at alpha 0 (same row seed as C-); or "
                                          f"the most grounded by score of its n samples at alpha 0.")
    n: int = field_help(4, help="best_of_n: samples per row at alpha 0 (the first is the 'sample' source's C+).")
    score: str = field_help("semantic_support", help=f"The grounding score that ranks best_of_n's samples and that "
                                                     f"min_margin compares, one of {list(PAIR_SCORES)}. The results "
                                                     f"page reports a score not used beside it.")
    min_margin: float | None = field_help(
        None, help="Keep a pair only when score(C+) - score(C-) >= min_margin; the pairs dropped are counted in "
                   "the pairs stage's result and on the results page. null: no margin filter.")
    gold_min_recall: float | None = field_help(
        None, help="chosen gold: keep a pair only when the gold question's PARENT-G recall against its own "
                   "passages (the share of their content words it uses) is >= this. null: no gold filter.")

    def __post_init__(self) -> None:
        if self.chosen not in CHOSEN_SOURCES:
            raise ConfigError(f"pairs.chosen must be one of {list(CHOSEN_SOURCES)}, got {self.chosen!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"pairs.n must be a whole number of samples >= 1, got {self.n!r}")
        if self.chosen == "best_of_n" and self.n < 2:
            raise ConfigError(f"pairs.n must be >= 2 for best_of_n (n = 1 is chosen 'sample'), got {self.n}")
        if self.score not in PAIR_SCORES:
            raise ConfigError(f"pairs.score must be one of {list(PAIR_SCORES)}, got {self.score!r}")
        for key in ("min_margin", "gold_min_recall"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"pairs.{key} must be a number or null, got {value!r}")
        if self.gold_min_recall is not None and not 0 <= self.gold_min_recall <= 1:
            raise ConfigError(f"pairs.gold_min_recall must be in [0, 1] (a PARENT-G recall), got "
                              f"{self.gold_min_recall}")

    @property
    def build_score(self) -> str | None:
        """The score that builds or filters these pairs (None: neither best-of-n nor a margin)."""
        return self.score if self.chosen == "best_of_n" or self.min_margin is not None else None

    def effective(self) -> PairsConfig:
        """These settings with the keys that do not change the pairs reset: n without best_of_n, score
        without a use, gold_min_recall without gold C+. Equal effective settings make equal pairs."""
        return dataclasses.replace(
            self, n=self.n if self.chosen == "best_of_n" else 1,
            score=self.score if self.build_score else PairsConfig.score,
            min_margin=None if self.min_margin is None else float(self.min_margin),
            gold_min_recall=float(self.gold_min_recall) if self.chosen == "gold" and self.gold_min_recall is not None
            else None)

    @property
    def tag(self) -> str:
        """Name of the pairs: ``gold``, ``sample``, ``best4-sem``, ``sample-sem-m0.05``, ``gold-r0.2``."""
        p = self.effective()
        parts = [f"best{p.n}" if p.chosen == "best_of_n" else p.chosen]
        if p.build_score:
            parts.append(SCORE_TAGS[p.build_score])
        if p.min_margin is not None:
            parts.append(f"m{p.min_margin:g}")
        if p.gold_min_recall is not None:
            parts.append(f"r{p.gold_min_recall:g}")
        return "-".join(parts)


@dataclass(frozen=True)
class Variant:
    """One RAC setting of the grid: the objective's settings and how its pairs are built."""

    alpha: float
    gamma: float
    beta: float
    loss_type: str
    pairs: PairsConfig

    @property
    def name(self) -> str:
        """System name: ``rac-a0.5-g0.5-b0.1-sigmoid-gold``, ``rac-a0.5-g0.5-b0.1-sigmoid-best4-sem-m0.05``."""
        return f"rac-a{self.alpha:g}-g{self.gamma:g}-b{self.beta:g}-{self.loss_type}-{self.pairs.tag}"


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

    The grounded and ungrounded SFT models are trained once (or once per seed, sft_per_seed);
    negatives are decoded once per (alpha, seed), and at alpha 0 (n times for best_of_n) when C+
    is sampled; the pairs of each construction are built once per (alpha, seed); each variant
    trains on them per seed; every system is evaluated on the validation split, the setting is selected there, and
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
    grid: dict[str, Any] | list[Any] = field_help(
        {"alpha": [0.5], "gamma": [0.5]},
        help=f"RAC variants: the product of the listed values of {list(VARIANT_KEYS)} (the pairs keys dotted, "
             f"'pairs.chosen: [sample, best_of_n]', or nested under pairs); a key left out takes the rac, "
             f"negatives.sampling or pairs section's value. A list of such mappings: the union of their "
             f"products (to trim a product to the points worth their time).")
    seeds: list[int] = field_help([0], help="Seeds of the stochastic stages (negatives decoding, RAC and gamma = 0 "
                                            "training, and the SFT models of sft_per_seed); every variant and T2 "
                                            "baseline runs once per seed. The splits do not depend on them "
                                            "(data.seed, validation.seed).")
    sft_per_seed: list[str] = field_help(
        [], help=f"SFT models trained once per seed, any of {list(SFT_KINDS)}: each seed's negatives and T2 "
                 f"training then start from that seed's models, and the baseline gets an interval over seeds. "
                 f"Left out: trained once with sft.seed and shared by every seed.")
    pairs: PairsConfig = nested(PairsConfig, "How each T2 pair (C+, C-) is built and filtered (any key may also "
                                             "be varied by the grid, as pairs.<key>).")
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
        unknown = [k for k in self.sft_per_seed if k not in SFT_KINDS]
        if unknown or len(set(self.sft_per_seed)) != len(self.sft_per_seed):
            raise ConfigError(f"sft_per_seed must list distinct values of {list(SFT_KINDS)}, got {self.sft_per_seed}")
        if self.sft_per_seed and self.sft.seed != SFTConfig.seed:
            raise ConfigError(f"sft.seed is set by the study runner when sft_per_seed is set (each seed's SFT "
                              f"models take that seed), so {self.sft.seed} would be ignored; remove it")
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
        # The pipeline wires the index into study_dir; the door's storage root may have made the
        # default index_dir absolute, which the pipeline would take for a value given.
        retriever = dataclasses.replace(self.retriever, index_dir=type(self.retriever)().index_dir)
        return PipelineConfig(run_dir=self.study_dir, stages=stages, base_model=self.base_model, data=self.data,
                              retriever=retriever, index_pool=self.index_pool, retrieve_pool=self.retrieve_pool)

    def variants(self) -> list[Variant]:
        """The grid's variants in a fixed order (the product of the listed values; settings that make the
        same pairs and the same training, such as n without best_of_n, are one variant)."""
        grids = self.grid if isinstance(self.grid, list) else [self.grid]
        if not grids:
            raise ConfigError("the grid is empty; give it a mapping of keys to lists of values, e.g. "
                              "grid: {alpha: [0.5], gamma: [0.5]}")
        variants = list({v.name: v for grid in grids for v in self._product(grid)}.values())
        for v in variants:
            needs = {"semantic_support": ("embedding_model", self.evaluate.embedding_model),
                     "entailment": ("nli_model", self.evaluate.nli_model)}.get(v.pairs.build_score or "")
            if needs and not needs[1]:
                raise ConfigError(f"pairs.score {v.pairs.score} (variant {v.name}) needs evaluate.{needs[0]}; set "
                                  f"it, or build the pairs with another score ({list(PAIR_SCORES)})")
        return variants

    def _product(self, grid: Any) -> list[Variant]:
        """The variants of one grid mapping (flattened: ``pairs.chosen``)."""
        if not isinstance(grid, dict):
            raise ConfigError(f"grid must be a mapping of keys to lists of values, or a list of such mappings; "
                              f"got {grid!r}")
        grid = _flat_grid(grid)
        for key in grid:
            if key in RENAMED:
                raise ConfigError(f"grid.{key} is now grid.{RENAMED[key]} (values {list(CHOSEN_SOURCES)}); rename it")
            if key not in VARIANT_KEYS:
                close = difflib.get_close_matches(key, VARIANT_KEYS, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise ConfigError(f"unknown variant key 'grid.{key}'.{hint} Variant keys are {list(VARIANT_KEYS)}")
        empty = [k for k, v in grid.items() if not isinstance(v, list) or not v]
        if not grid or empty:
            raise ConfigError(f"the grid is empty{f' ({empty} list no values)' if empty else ''}; give each of "
                              f"its keys a list of at least one value, e.g. grid: {{alpha: [0.5], gamma: [0.5]}}")
        base = {"alpha": [self.negatives.sampling.alpha], "gamma": [self.rac.gamma], "beta": [self.rac.beta],
                "loss_type": [self.rac.loss_type], **{f"pairs.{k}": [getattr(self.pairs, k)] for k in PAIR_KEYS}}
        axes = [list(dict.fromkeys(grid.get(k, base[k]))) for k in VARIANT_KEYS]
        return [_variant(dict(zip(VARIANT_KEYS, values, strict=True)), rac=self.rac, sampling=self.negatives.sampling)
                for values in itertools.product(*axes)]


def _flat_grid(grid: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{pairs: {chosen: [...]}}`` (how ``--grid.pairs.chosen`` arrives) as ``{"pairs.chosen": [...]}``."""
    out: dict[str, Any] = {}
    for key, value in grid.items():
        if isinstance(value, dict):
            out.update(_flat_grid(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _variant(values: dict[str, Any], rac: RACConfig, sampling: SamplingParams) -> Variant:
    """A grid point, checked by the sections' own rules (gamma in [0, 1], a known loss, ...)."""
    for key in ("alpha", "gamma", "beta"):
        if isinstance(values[key], bool) or not isinstance(values[key], (int, float)):
            raise ConfigError(f"grid.{key} must list numbers, got {values[key]!r}")
    alpha, gamma, beta, loss_type = (values["alpha"], values["gamma"], values["beta"], values["loss_type"])
    try:
        dataclasses.replace(sampling, alpha=float(alpha))
        dataclasses.replace(rac, gamma=float(gamma), beta=float(beta), loss_type=str(loss_type))
        pairs = PairsConfig(**{k: values[f"pairs.{k}"] for k in PAIR_KEYS}).effective()
    except ConfigError as e:
        raise ConfigError(f"grid: {e}") from None
    return Variant(float(alpha), float(gamma), float(beta), str(loss_type), pairs)
