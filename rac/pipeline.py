"""The whole method as one run: index -> retrieve -> prepare_model -> SFT (grounded and
ungrounded) -> negatives -> joint training -> evaluation.

Each stage writes into ``<run_dir>/<stage>/`` with a ``manifest.json``: the stage, the hash
of its resolved config, the fingerprints of its inputs (upstream manifests, data files),
package versions, git revision and row counts in and out. A re-run skips every stage
whose config and inputs are unchanged; ``--from STAGE`` re-runs that stage and all after.
A stage killed midway resumes from what it wrote (retrieval and negatives skip the ids
already written, training resumes from its last checkpoint) when it is run again with the
same config and inputs; with others, its folder is deleted and the stage starts clean.

A stage whose rows failed (:mod:`rac.failures`: the search server did not answer, decoding
raised) is not finished: no manifest is written, :class:`~rac.failures.StageIncompleteError`
stops the run, and the next run redoes exactly those rows. Manifests and ``started.json``
are written whole or not at all, and one cut short reads as absent (the stage runs again);
a finished stage whose Parquet files changed size or went missing runs again too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rac import layout
from rac.config import (
    ActorPoolConfig,
    ConfigError,
    field_help,
    git_revision,
    nested,
    package_versions,
    refuse_wired_keys,
    to_dict,
)
from rac.data.config import DataConfig
from rac.decoding.config import NegativesConfig
from rac.detector.config import DetectorConfig
from rac.durable import read_json, write_json
from rac.evaluation.catalogue import is_figure
from rac.evaluation.config import GROUNDED_SFT, RAC_SYSTEM, UNGROUNDED_SFT, EvaluateConfig, SystemConfig
from rac.failures import StageResult
from rac.models.factory import PACKAGED_MODEL_DIR
from rac.models.prepare import PrepareModelConfig, check_base_model
from rac.retrieval import IndexConfig, RetrieveConfig, RetrieverConfig
from rac.training.config import RACConfig, SFTConfig

logger = logging.getLogger(__name__)

STAGES = ("index", "retrieve", "prepare_model", "sft_grounded", "sft_ungrounded", "negatives", "train_detector",
          "train_rac", "evaluate")
#: Stages a run makes unless told otherwise: the optional unsupported-span detector is left out
#: (``with_detector: true`` adds it; about 4 minutes on the demo on 2 shared cores).
DEFAULT_STAGES = tuple(s for s in STAGES if s != "train_detector")
#: What each stage reads from (its fingerprint changes when any of these re-runs differently).
UPSTREAM = {
    "index": (), "retrieve": ("index",), "prepare_model": (),
    "sft_grounded": ("retrieve", "prepare_model"), "sft_ungrounded": ("retrieve", "prepare_model"),
    "negatives": ("retrieve", "sft_grounded", "sft_ungrounded"), "train_detector": ("negatives",),
    "train_rac": ("negatives", "sft_grounded"),
    "evaluate": ("retrieve", "sft_grounded", "sft_ungrounded", "train_rac", "negatives", "train_detector"),
}
#: Keys of the stage sections that the pipeline sets from run_dir (the layout's, the index and
#: the detector's): a value given there would be lost.
WIRED_KEYS = layout.wired_keys(retriever=("index_dir",), detector=("negatives_dirs", "output_dir", "run_name",
                                                                   "lm_tokenizer"), evaluate=("detector",))
MANIFEST = "manifest.json"
#: Written when a stage starts: the config hash and inputs its output in the folder belongs to.
STARTED = "started.json"


@dataclass
class PipelineConfig:
    """``python -m jobs.pipeline``: every stage of RAC in order, into one run directory.

    The stage sections take every key of that stage's own config; the paths that connect
    stages (input_dir, output_dir, model paths) are set by the pipeline from ``run_dir``.
    """

    run_dir: str = field_help("outputs/demo", storage="path",
                              help="Directory of this run; each stage writes a subfolder (under the storage root).")
    stages: list[str] = field_help(list(DEFAULT_STAGES), help=f"Stages to run, in order; any of {list(STAGES)}.")
    with_detector: bool = field_help(
        False, help="Add the optional train_detector stage after negatives (the unsupported-span detector, "
                    "jobs.train_detector) and give evaluate its model (detector support, shown apart).")
    base_model: str = field_help(
        PACKAGED_MODEL_DIR, storage="path",
        help="Hugging Face model directory the SFT stages start from. prepare_model writes it only where it is "
             "the packaged default's directory (a path ending in smollm2-135m-instruct) or base_model_gguf is "
             "set; any other base_model without a config.json stops the run before any work (exit 2).")
    base_model_gguf: str | None = field_help(
        None, storage="path", help="A GGUF file that prepare_model converts into base_model (dequantised).")
    show: int = field_help(5, help="Example questions printed at the end.")
    data: DataConfig = nested(DataConfig, "Records and corpus.")
    retriever: RetrieverConfig = nested(RetrieverConfig, "BM25 backend. The embedded index goes to "
                                                         "<run_dir>/index/bm25.")
    index_pool: ActorPoolConfig = nested(ActorPoolConfig, "Actor pool of Elasticsearch bulk indexing.")
    retrieve_pool: ActorPoolConfig = nested(ActorPoolConfig, "Actor pool of retrieval.")
    sft: SFTConfig = nested(SFTConfig, "Both SFT stages (grounded and ungrounded differ only in `grounded`).")
    negatives: NegativesConfig = nested(NegativesConfig, "Mixture decoding of the unfaithful negatives.")
    rac: RACConfig = nested(RACConfig, "The joint objective.")
    detector: DetectorConfig = nested(DetectorConfig, "The unsupported-span detector (with_detector: true).")
    evaluate: EvaluateConfig = nested(EvaluateConfig, "Evaluation of the grounded, ungrounded and RAC models.")

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
        if self.with_detector and "train_detector" not in self.stages:
            at = self.stages.index("negatives") + 1 if "negatives" in self.stages else len(self.stages)
            self.stages = [*self.stages[:at], "train_detector", *self.stages[at:]]
        refuse_wired_keys(self, WIRED_KEYS, "the pipeline from run_dir (and base_model)")

    def preflight(self) -> None:
        """What is checked once the paths are resolved, before any stage: the base model exists,
        or is one a run may write (:func:`rac.models.prepare.check_base_model`)."""
        if {"prepare_model", "sft_grounded", "sft_ungrounded"} & set(self.stages):
            check_base_model(self.base_model, self.base_model_gguf, "prepare_model" in self.stages)

    def stage_configs(self) -> dict[str, Any]:
        """Each stage's config, wired to the run directory."""
        run = Path(self.run_dir)
        retriever = dataclasses.replace(self.retriever, index_dir=str(run / "index" / "bm25"))

        retrieved = run / "retrieve" / "retrieved"
        grounded, ungrounded = run / "sft_grounded", run / "sft_ungrounded"
        cfgs: dict[str, Any] = {
            "index": IndexConfig(data=self.data, retriever=retriever, pool=self.index_pool,
                                 output_dir=str(run / "index")),
            "retrieve": RetrieveConfig(data=self.data, retriever=retriever, pool=self.retrieve_pool,
                                       output_dir=str(run / "retrieve"), show=0),
            "prepare_model": PrepareModelConfig(output_dir=self.base_model, gguf_file=self.base_model_gguf),
            "sft_grounded": layout.sft(self.sft, True, retrieved, grounded, self.base_model),
            "sft_ungrounded": layout.sft(self.sft, False, retrieved, ungrounded, self.base_model),
            "negatives": layout.negatives(self.negatives, run / "retrieve", run / "negatives", grounded, ungrounded),
            "train_rac": layout.rac(self.rac, run / "negatives" / "negatives", run / "train_rac", grounded),
        }
        cfgs["train_detector"] = dataclasses.replace(
            self.detector, negatives_dirs=[str(run / "negatives")], output_dir=str(run / "train_detector"),
            run_name="train_detector", lm_tokenizer=layout.model_dir(grounded))
        systems = [SystemConfig(GROUNDED_SFT, layout.model_dir(grounded), "grounded"),
                   SystemConfig(UNGROUNDED_SFT, layout.model_dir(ungrounded), "ungrounded"),
                   SystemConfig(RAC_SYSTEM, layout.model_dir(run / "train_rac"), "grounded")]
        detector = layout.model_dir(run / "train_detector") if "train_detector" in self.stages else None
        cfgs["evaluate"] = layout.evaluate(self.evaluate, run / "retrieve", run / "evaluate", systems,
                                           {str(self.negatives.sampling.alpha): str(run / "negatives")},
                                           detector=detector)
        return cfgs


# ----------------------------------------------------------------------------- manifests


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def external_inputs(stage: str, cfg: PipelineConfig) -> dict[str, str]:
    """Fingerprints of files a stage reads that no stage of this run wrote."""
    out: dict[str, str] = {}
    if stage in ("index", "retrieve"):
        for key, path in (("data", cfg.data.path), ("corpus", cfg.data.corpus_path)):
            if path and Path(path).is_file():
                out[key] = _sha256_file(Path(path))
        if cfg.data.format == "demo":
            from importlib import resources

            out["data"] = hashlib.sha256(resources.files("rac.data").joinpath("demo/demo.json").read_bytes()
                                         ).hexdigest()
    if stage in ("sft_grounded", "sft_ungrounded") and "prepare_model" not in cfg.stages:
        weights = sorted(Path(cfg.base_model).glob("*.safetensors"))
        out["base_model"] = _hash([(w.name, w.stat().st_size, int(w.stat().st_mtime)) for w in weights])
    return out


def parquet_sizes(stage_dir: Path) -> dict[str, int]:
    """Size of every Parquet file a stage wrote: a finished stage whose files no longer match
    (one cut short, one deleted) is run again rather than trusted."""
    return {str(p.relative_to(stage_dir)): p.stat().st_size for p in sorted(stage_dir.rglob("*.parquet"))}


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    return read_json(stage_dir / MANIFEST)


def manifest_result(manifest: dict[str, Any]) -> StageResult:
    """The :class:`~rac.failures.StageResult` a stage's manifest recorded."""
    return StageResult.from_dict(manifest.get("result") or {"stage": manifest.get("stage", "?")})


def runners() -> dict[str, Callable[[Any], StageResult]]:
    from rac.models.prepare import prepare_model
    from rac.retrieval import run_index, run_retrieve
    from rac.training import run_rac, run_sft

    def negatives(c: Any) -> StageResult:
        from rac.decoding.stage import run_generate_negatives

        return run_generate_negatives(c)

    def evaluate(c: Any) -> StageResult:
        from rac.evaluation import run_evaluate

        return run_evaluate(c)

    def train_detector(c: Any) -> StageResult:
        from rac.detector.train import run_train_detector

        return run_train_detector(c)

    return {"index": run_index, "retrieve": run_retrieve,
            "prepare_model": lambda c: StageResult("prepare_model", details={"model_dir": str(prepare_model(c))}),
            "sft_grounded": run_sft, "sft_ungrounded": run_sft, "negatives": negatives, "train_rac": run_rac,
            "train_detector": train_detector, "evaluate": evaluate}


def _prepare_stage_dir(stage_dir: Path, key: dict[str, Any], forced: bool) -> None:
    """Keep what a killed run of this very stage left (its stage resumes from it), else start clean.

    A stage directory written with another config or other inputs, or one restarted with
    ``--from``, is deleted first: no stage ever resumes from output that is not its own.
    """
    started = read_json(stage_dir / STARTED)
    if stage_dir.exists() and (forced or started != key):
        why = "--from" if forced else "its config or inputs changed"
        logger.info("%s: deleting the earlier output (%s) before running", stage_dir, why)
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json(stage_dir / STARTED, key)


def run_pipeline(cfg: PipelineConfig, start_from: str | None = None) -> dict[str, dict[str, Any]]:
    """Run the configured stages in order, skipping those whose config and inputs are unchanged.

    Returns each stage's manifest (with ``skipped`` true for the stages not re-run).
    """
    if start_from is not None and start_from not in cfg.stages:
        raise ConfigError(f"--from {start_from}: not one of the configured stages {cfg.stages}")
    cfg.preflight()
    stage_cfgs, run = cfg.stage_configs(), Path(cfg.run_dir)
    run_fns = runners()
    manifests: dict[str, dict[str, Any]] = {}
    forced = False
    for i, stage in enumerate(cfg.stages, start=1):
        forced = forced or stage == start_from
        inputs = {up: (manifests.get(up) or read_manifest(run / up) or {}).get("fingerprint", "absent")
                  for up in UPSTREAM[stage] if up in cfg.stages or (run / up / MANIFEST).is_file()}
        inputs.update(external_inputs(stage, cfg))
        manifests[stage] = run_stage(stage, run / stage, stage_cfgs[stage], run_fns[stage], inputs, forced=forced,
                                     label=f"stage {i}/{len(cfg.stages)} {stage}")
    return manifests


def summary_text(cfg: PipelineConfig, manifests: dict[str, dict[str, Any]], width: int = 100) -> str:
    """What the run did, then example clarifying questions beside their passages and the
    metrics table (from the evaluation report, when that stage is part of the run)."""
    import textwrap

    lines = ["", "stages:"]
    for stage, m in manifests.items():
        state = "unchanged, skipped" if m.get("skipped") else f"ran in {m.get('seconds')} s"
        result = manifest_result(m)
        lines.append(f"  {stage:<15} {state:<22} rows in {result.rows_in}, out {result.rows_out}")
    report_path = Path(cfg.run_dir) / "evaluate" / "report.json"
    if "evaluate" in manifests and report_path.is_file():
        report = json.loads(report_path.read_text())
        lines += ["", "example clarifying questions:"]
        for ex in report.get("examples", [])[: cfg.show]:
            lines += ["", f"query: {ex['query']!r}"]
            for rank, text in enumerate(ex["passages"][:3], start=1):
                lines.append(f"  [{rank}] {textwrap.shorten(text, width=width - 8)}")
            lines.append(f"  gold: {ex.get('gold_question')}")
            for name, q in ex["questions"].items():
                lines.append(f"  {name}: {q['prediction']}")
        columns = ["bleu_corpus", "rouge_l", "meteor", "meteor_exact", "parent_precision", "parent_recall", "parent_f1",
                   "entailment", "semantic_support"]
        systems = report.get("systems", {})
        # METEOR only with WordNet (a number); the exact-match one always.
        shown = [c for c in columns if any(c in s for s in systems.values())
                 and (c != "meteor" or any(is_figure(s.get(c)) for s in systems.values()))]
        lines += ["", "metrics (test split):", "  " + "system".ljust(16) + "".join(c[:16].rjust(17) for c in shown)]
        for name, s in systems.items():
            cells = [s.get(c) for c in shown]
            lines.append("  " + name.ljust(16) + "".join(
                (f"{v:.4f}" if isinstance(v, float) else str(v))[:16].rjust(17) for v in cells))
        if report.get("metric_status"):
            lines.append("  without a number: " + "; ".join(f"{k}: {v}" for k, v in report["metric_status"].items()))
        detector = report.get("detector")
        if detector:
            scores = ", ".join(f"{name} {s['detector_support']:.4f}" for name, s in detector["systems"].items()
                               if s.get("detector_support") is not None)
            lines.append(f"  detector support (learned from this run's negatives, so it favours a model trained "
                         f"against them; see the report): {scores}")
        lines.append(f"\nfull report: {Path(cfg.run_dir) / 'evaluate' / 'report.md'}")
    elif "retrieve" in manifests:
        from rac.retrieval import format_examples, read_retrieved

        rows = read_retrieved(Path(cfg.run_dir) / "retrieve").to_pylist()
        lines += ["", "queries and the passages retrieved for them:", "",
                  format_examples(rows[:: max(1, len(rows) // max(1, cfg.show))][: cfg.show])]
    return "\n".join(lines)


def run_stage(stage: str, stage_dir: Path, stage_cfg: Any, fn: Callable[[Any], StageResult],
              inputs: dict[str, str], forced: bool = False, label: str | None = None) -> dict[str, Any]:
    """One stage under the manifest rules: :func:`run_pipeline` runs each of its stages with it,
    and so do runners that lay out their own stages (the study runner, :mod:`rac.experiment`).

    Skipped when ``stage_dir``'s manifest has the same config hash and ``inputs`` (upstream
    fingerprints) and its Parquet output is as the manifest left it; a killed run of the same
    stage resumes from what it left; output made with another config or other inputs (or
    ``forced``, ``--from``) is deleted first. A stage that ends with failed rows writes no
    manifest (:meth:`~rac.failures.StageResult.check_complete` raises), so the next run redoes
    them. ``label`` names the stage in the log (``stage 3/9 prepare_model``); ``stage`` in the
    manifest. Returns the manifest, ``skipped`` added.
    """
    label = label or stage
    config_hash = _hash(stage_cfg if isinstance(stage_cfg, dict) else to_dict(stage_cfg))
    previous = read_manifest(stage_dir)
    unchanged = (not forced and previous and previous.get("config_hash") == config_hash
                 and previous.get("inputs") == inputs)
    outputs = parquet_sizes(stage_dir)
    if unchanged and previous.get("outputs", outputs) != outputs:  # manifests of before: not checked
        logger.warning("%s: its Parquet output changed since it finished (a file cut short or deleted?); "
                       "running it again", label)
        unchanged = False
    if unchanged:
        logger.info("%s: unchanged since %s, skipped", label, previous.get("finished"))
        return {**previous, "skipped": True}
    _prepare_stage_dir(stage_dir, {"config_hash": config_hash, "inputs": inputs}, forced)
    logger.info("%s: running", label)
    start = time.perf_counter()
    result = fn(stage_cfg)
    result.check_complete()  # failed rows: no manifest, so the rerun redoes them
    manifest = {
        "stage": stage, "config_hash": config_hash, "inputs": inputs, "outputs": parquet_sizes(stage_dir),
        "fingerprint": _hash([config_hash, inputs]), "result": result.to_dict(),
        "seconds": round(time.perf_counter() - start, 1),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(), "versions": package_versions(),
    }
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json(stage_dir / MANIFEST, manifest)
    return {**manifest, "skipped": False}
