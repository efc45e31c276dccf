"""The study as one resumable job: shared stages once, variants per seed, selection on
validation, then test once.

Layout of ``study_dir`` (each stage folder has the pipeline's ``manifest.json``, so a rerun
skips every finished stage and resumes the interrupted one, :func:`rac.pipeline.run_stage`)::

    index/ retrieve/ prepare_model/         the pipeline's own stages
    splits/select/retrieved/                T1 and T2 (subsampled, validation topics moved out) and val
    splits/test/retrieved/                  the test rows: read by the test evaluation only
    sft_grounded/ sft_ungrounded/           trained once, shared by every variant (sft_grounded-s<seed>/: per seed)
    negatives/a<alpha>-s<seed>/             decoded once per (alpha, seed), shared across gamma/beta/loss
    negatives/a0-s<seed>-k<k>/              best_of_n: the k-th alpha-0 sample (k >= 1; k = 0 is a0-s<seed>)
    pairs/a<alpha>-<pairs tag>-s<seed>/     C+ sampled, best of n, or filtered (rac.experiment.pairs)
    train/<variant>-s<seed>/  train/continued-s<seed>/
    validation/  validity/<pairs tag>/  selection/  test/
    events.jsonl                            every stage started, finished or skipped, in order
    results.json  results.md  plots/
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from rac import layout
from rac.config import write_run_info
from rac.data.schema import VALIDATION_SPLIT
from rac.decoding.mixture import sample_seed
from rac.decoding.stage import run_generate_negatives
from rac.evaluation import run_evaluate
from rac.evaluation.catalogue import is_figure
from rac.evaluation.config import CONTINUED_SFT, GROUNDED_SFT, UNGROUNDED_SFT, SystemConfig
from rac.evaluation.significance import over_seeds
from rac.experiment.config import ExperimentConfig, SelectionConfig, ValidationConfig, Variant
from rac.experiment.pairs import PairsStageConfig, build_pairs, scoring_config
from rac.experiment.results import write_results
from rac.experiment.study import EVENTS, EventLog, now, seed_name
from rac.failures import StageResult
from rac.parts import write_part
from rac.pipeline import external_inputs, manifest_result, run_pipeline, run_stage
from rac.retrieval import read_retrieved
from rac.training import run_rac, run_sft
from rac.training.config import SFTConfig, TrainConfig

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the splits stage


@dataclass
class SplitsConfig:
    """The ``splits`` stage: validation topics out of T1 and T2, T1/T2 subsampled, test set apart."""

    retrieve_dir: str
    output_dir: str
    validation: ValidationConfig


def _topic(row: dict[str, Any]) -> str:
    return str(row["topic_id"]) if row.get("topic_id") is not None else "id:" + str(row["id"])


def _sample(rows: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    if limit is None or len(rows) <= limit:
        return rows
    return sorted(random.Random(seed).sample(sorted(rows, key=lambda r: r["id"]), limit), key=lambda r: r["id"])


def carve_splits(cfg: SplitsConfig) -> StageResult:
    """Write ``select/`` (T1, T2, val) and ``test/`` (test) in the retrieval output's format.

    The validation split is ``validation.fraction`` of the T1 topics plus the same share of
    the T2 topics (seeded, at least one of each); it is disjoint by topic from T1, T2 and test.
    T1, T2 and val rows are then subsampled to their caps. The test rows are written apart,
    so that nothing before selection reads a folder that holds them.
    """
    table = read_retrieved(cfg.retrieve_dir)
    rows, v = table.to_pylist(), cfg.validation
    rng = random.Random(v.seed)
    held_out: set[str] = set()
    for split in ("t1", "t2"):
        topics = sorted({_topic(r) for r in rows if r["split"] == split})
        rng.shuffle(topics)
        held_out.update(topics[:max(1, round(v.fraction * len(topics)))] if len(topics) > 1 else [])
    by_split: dict[str, list[dict[str, Any]]] = {"t1": [], "t2": [], VALIDATION_SPLIT: [], "test": []}
    for r in rows:
        split = VALIDATION_SPLIT if r["split"] in ("t1", "t2") and _topic(r) in held_out else r["split"]
        by_split.setdefault(split, []).append({**r, "split": split})
    kept = {"t1": _sample(by_split["t1"], v.t1_rows, v.seed), "t2": _sample(by_split["t2"], v.t2_rows, v.seed),
            VALIDATION_SPLIT: _sample(by_split[VALIDATION_SPLIT], v.max_rows, v.seed), "test": by_split["test"]}
    out = Path(cfg.output_dir)
    for folder, splits in (("select", ("t1", "t2", VALIDATION_SPLIT)), ("test", ("test",))):
        (out / folder / "retrieved").mkdir(parents=True, exist_ok=True)
        part = [r for s in splits for r in kept[s]]
        write_part(out / folder / "retrieved", "part-00000.parquet", pa.Table.from_pylist(part, schema=table.schema))
    result = StageResult("splits", rows_in=len(rows), rows_out=sum(len(x) for x in kept.values()), details={
        "rows": {s: len(x) for s, x in kept.items()}, "available": {s: len(x) for s, x in by_split.items()},
        "topics": {s: len({_topic(r) for r in x}) for s, x in kept.items()}, "validation_topics": sorted(held_out)})
    (out / "splits.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


# ----------------------------------------------------------------------------- selection


@dataclass
class SelectConfig:
    """The ``selection`` stage: read the validation report, apply the rule."""

    report: str
    output_dir: str
    variants: list[str]
    seeds: list[int]
    rule: SelectionConfig


def validation_table(report: dict[str, Any], variants: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """Per variant and baseline: every numeric metric of the validation report, mean over seeds (and its
    95% interval over seeds in ``ci95_seeds``)."""
    systems = report["systems"]
    out = []
    for name in [GROUNDED_SFT, UNGROUNDED_SFT, CONTINUED_SFT, *variants]:
        runs = [systems[name]] if name in systems else [systems[seed_name(name, s)] for s in seeds
                                                         if seed_name(name, s) in systems]
        if not runs:
            continue
        keys = [k for k, x in runs[0].items() if is_figure(x) and all(is_figure(r.get(k)) for r in runs)]
        summaries = {k: over_seeds([r[k] for r in runs]) for k in keys}
        out.append({"system": name, "seeds": len(runs), **{k: e["mean"] for k, e in summaries.items()},
                    "ci95_seeds": {k: e["ci95_seeds"] for k, e in summaries.items()}})
    return out


def select_setting(cfg: SelectConfig) -> StageResult:
    """Pick the variant with the best validation ``rule.metric`` among those whose ``rule.guard_metric``
    is within ``rule.guard_tolerance`` of grounded SFT's (all of them, flagged, when none is)."""
    report = json.loads(Path(cfg.report).read_text())
    table = validation_table(report, cfg.variants, cfg.seeds)
    by_name = {row["system"]: row for row in table}
    rule = cfg.rule
    floor = by_name[GROUNDED_SFT][rule.guard_metric] - rule.guard_tolerance
    candidates = [by_name[v] for v in cfg.variants if v in by_name]
    for row in candidates:
        row["qualifies"] = row.get(rule.guard_metric, float("-inf")) >= floor - 1e-12
    qualified = [row for row in candidates if row["qualifies"]]
    best = max(qualified or candidates, key=lambda row: row.get(rule.metric, float("-inf")))
    selection = {"selected": best["system"], "metric": rule.metric, "guard_metric": rule.guard_metric,
                 "guard_tolerance": rule.guard_tolerance, "guard_floor": floor, "met_guard": bool(qualified),
                 "rule": f"max validation {rule.metric} (mean over seeds) among variants with {rule.guard_metric} "
                         f">= grounded SFT's - {rule.guard_tolerance:g}",
                 "table": table, "selected_at": now()}
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(selection, indent=2))
    return StageResult("selection", rows_in=len(candidates), rows_out=1,
                       details={"selected": best["system"], "met_guard": bool(qualified)})


# ----------------------------------------------------------------------------- the study


class Study:
    """Plans each stage's config from the study config and runs the stages in order."""

    def __init__(self, cfg: ExperimentConfig):
        self.cfg, self.dir = cfg, Path(cfg.study_dir)
        self.variants = cfg.variants()
        self.manifests: dict[str, dict[str, Any]] = {}
        self.log = EventLog(self.dir / EVENTS)

    # -- paths
    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    @property
    def select_dir(self) -> str:
        return str(self.path("splits", "select"))

    def model(self, stage: str) -> str:
        return layout.model_dir(self.path(*stage.split("/")))

    @staticmethod
    def negatives_stage(alpha: float, seed: int, k: int = 0) -> str:
        """C- at ``alpha``; at alpha 0 the grounded samples, ``k`` >= 1 the further ones of best-of-n."""
        return f"negatives/a{alpha:g}-s{seed}" + (f"-k{k}" if k else "")

    def sft_stage(self, kind: str, seed: int) -> str:
        """The SFT model of ``kind`` (grounded, ungrounded) that seed ``seed``'s T2 stages start from."""
        return f"sft_{kind}-s{seed}" if kind in self.cfg.sft_per_seed else f"sft_{kind}"

    def sft_stages(self, kind: str) -> dict[str, int]:
        """The SFT stages of ``kind``, each with the seed it trains with (the first seed's when shared)."""
        stages: dict[str, int] = {}
        for seed in self.cfg.seeds:
            stages.setdefault(self.sft_stage(kind, seed), seed)
        return stages

    def pairs_stage(self, v: Variant, seed: int) -> str:
        """The pairs ``v`` trains on: the negatives as they are (gold C+, no filter), or its pairs stage."""
        return self.negatives_stage(v.alpha, seed) if v.pairs.tag == "gold" else \
            f"pairs/a{v.alpha:g}-{v.pairs.tag}-s{seed}"

    def candidate_stages(self, v: Variant, seed: int) -> list[str]:
        """The alpha-0 runs whose samples are ``v``'s candidates for C+."""
        count = {"gold": 0, "sample": 1, "best_of_n": v.pairs.n}[v.pairs.chosen]
        return [self.negatives_stage(0.0, seed, k) for k in range(count)]

    # -- running
    def stage(self, name: str, stage_cfg: Any, fn: Callable[[Any], StageResult], upstream: list[str],
              external: dict[str, str] | None = None) -> dict[str, Any]:
        """Run (or skip) one stage; its inputs are the fingerprints of ``upstream`` stages (and of
        ``external`` files no stage wrote, such as a base model of one's own)."""
        inputs = {u: self.manifests[u]["fingerprint"] for u in upstream} | (external or {})

        def logged(c: Any) -> StageResult:
            self.log.write(name, "started")
            try:
                return fn(c)
            except BaseException as e:
                self.log.write(name, "failed", error=f"{type(e).__name__}: {e}")
                raise

        manifest = run_stage(name, self.path(*name.split("/")), stage_cfg, logged, inputs)
        self.log.write(name, "skipped" if manifest["skipped"] else "finished", seconds=manifest.get("seconds"))
        self.manifests[name] = manifest
        return manifest

    def run(self) -> dict[str, Any]:
        write_run_info(self.dir, "experiment", self.cfg, variants=[v.name for v in self.variants])
        self.shared_stages()
        self.t2_stages()
        self.evaluate_validation()
        selected = self.select()
        self.evaluate_test(selected)
        return write_results(self.cfg, self.dir, self.variants, selected, self.manifests)

    def shared_stages(self) -> None:
        cfg = self.cfg
        pipe = cfg.pipeline_config()
        for name, manifest in run_pipeline(pipe).items():
            self.log.write(name, "skipped" if manifest["skipped"] else "finished", seconds=manifest.get("seconds"))
            self.manifests[name] = manifest
        base = ["prepare_model"] if cfg.prepare_model else []
        self.stage("splits", SplitsConfig(str(self.path("retrieve")), str(self.path("splits")), cfg.validation),
                   carve_splits, ["retrieve"])

        for kind in ("grounded", "ungrounded"):
            for name, seed in self.sft_stages(kind).items():
                settings = {"seed": seed} if kind in cfg.sft_per_seed else {}
                sft = layout.sft(cfg.sft, kind == "grounded", self.select_dir, self.path(name), cfg.base_model,
                                 split="t1", **settings)
                self.stage(name, sft, run_sft, ["splits", *base], external_inputs(f"sft_{kind}", pipe))

    def t2_stages(self) -> None:
        cfg = self.cfg
        for seed in cfg.seeds:
            grounded, ungrounded = self.sft_stage("grounded", seed), self.sft_stage("ungrounded", seed)
            decoded = {(v.alpha, 0) for v in self.variants}
            decoded |= {(0.0, k) for v in self.variants for k in range(len(self.candidate_stages(v, seed)))}
            for alpha, k in sorted(decoded):
                stage = self.negatives_stage(alpha, seed, k)
                neg = layout.negatives(cfg.negatives, self.select_dir, self.path(stage), self.path(grounded),
                                       self.path(ungrounded), splits=["t2"], seed=sample_seed(seed, k),
                                       sampling=dataclasses.replace(cfg.negatives.sampling, alpha=alpha))
                self.stage(stage, neg, run_generate_negatives, ["splits", grounded, ungrounded])
            for v in self.variants:
                pairs = self.pairs_stage(v, seed)
                if pairs not in self.manifests:
                    neg, candidates = self.negatives_stage(v.alpha, seed), self.candidate_stages(v, seed)
                    build = PairsStageConfig(str(self.path(neg)), [str(self.path(c)) for c in candidates],
                                             str(self.path(pairs)), v.pairs,
                                             scoring_config(cfg.evaluate, str(self.path(neg)), v.alpha,
                                                            str(self.path(pairs))))
                    self.stage(pairs, build, build_pairs, [neg, *candidates])
                name = f"train/{seed_name(v.name, seed)}"
                rac = layout.rac(cfg.rac, self.path(pairs), self.path(name), self.path(grounded), gamma=v.gamma,
                                 beta=v.beta, loss_type=v.loss_type, seed=seed)
                self.stage(name, rac, run_rac, [pairs, grounded])
            self.stage(f"train/{seed_name(CONTINUED_SFT, seed)}", self.continued_config(seed), run_sft,
                       ["splits", grounded])

    def continued_config(self, seed: int) -> SFTConfig:
        """The gamma = 0 baseline: the rac section's training settings, SFT on T2's gold questions
        from the grounded model (the data RAC sees, without the preference term)."""
        name = f"train/{seed_name(CONTINUED_SFT, seed)}"
        common = {f.name: getattr(self.cfg.rac, f.name) for f in dataclasses.fields(TrainConfig)}
        return SFTConfig(**{**common, "seed": seed, "input_dir": self.select_dir, "output_dir": str(self.path(name)),
                            "run_name": seed_name(CONTINUED_SFT, seed),
                            "model": dataclasses.replace(self.cfg.rac.model,
                                                         path=self.model(self.sft_stage("grounded", seed)))},
                         grounded=True, split="t2")

    def systems(self, variants: list[Variant]) -> tuple[list[SystemConfig], list[str]]:
        """The baselines and ``variants`` (per seed) as evaluation systems, and the stages that made them."""
        systems, stages = [], []
        for kind, system in (("grounded", GROUNDED_SFT), ("ungrounded", UNGROUNDED_SFT)):
            for stage, seed in self.sft_stages(kind).items():
                name = seed_name(system, seed) if kind in self.cfg.sft_per_seed else system
                systems.append(SystemConfig(name, self.model(stage), kind))
                stages.append(stage)
        for seed in self.cfg.seeds:
            for system in [CONTINUED_SFT, *(v.name for v in variants)]:
                stage = f"train/{seed_name(system, seed)}"
                systems.append(SystemConfig(seed_name(system, seed), self.model(stage), "grounded"))
                stages.append(stage)
        return systems, stages

    def evaluate_validation(self) -> None:
        systems, stages = self.systems(self.variants)
        val = layout.evaluate(self.cfg.evaluate, self.select_dir, self.path("validation"), systems, {},
                              splits=[VALIDATION_SPLIT])
        self.stage("validation", val, run_evaluate, ["splits", *stages])
        for tag in sorted({v.pairs.tag for v in self.variants}):
            # Metric validity on T2: does each faithfulness score rank C+ above C-? (first seed's pairs;
            # every seed's pairwise accuracies are in the pairs stages' results)
            upstream = {str(v.alpha): self.pairs_stage(v, self.cfg.seeds[0]) for v in self.variants
                        if v.pairs.tag == tag}
            validity = layout.evaluate(self.cfg.evaluate, self.select_dir, self.path("validity", tag), [],
                                       {a: str(self.path(s)) for a, s in upstream.items()})
            self.stage(f"validity/{tag}", validity, run_evaluate, sorted(set(upstream.values())))

    def select(self) -> Variant:
        select = SelectConfig(report=str(self.path("validation", "report.json")),
                              output_dir=str(self.path("selection")), variants=[v.name for v in self.variants],
                              seeds=list(self.cfg.seeds), rule=self.cfg.selection)
        manifest = self.stage("selection", select, select_setting, ["validation"])
        return next(v for v in self.variants if v.name == manifest_result(manifest).details["selected"])

    def evaluate_test(self, selected: Variant) -> None:
        systems, stages = self.systems([selected])
        test = layout.evaluate(self.cfg.evaluate, self.path("splits", "test"), self.path("test"), systems, {},
                               splits=["test"])
        self.stage("test", test, run_evaluate, ["splits", "selection", *stages])


def run_study(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run (or resume) the study of ``cfg``; returns what :func:`rac.experiment.results.write_results` wrote.

    Ray must be initialised by the caller.
    """
    return Study(cfg).run()

