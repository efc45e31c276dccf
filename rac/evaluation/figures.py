"""The evaluation's figures, as JSON-ready data: per-system means, paired significance, the
mixture sweep, metric validity on T2, examples, and the detector's section.

Names and definitions of the metrics are in :mod:`rac.evaluation.catalogue`; the Markdown
report and plots that show these figures are in :mod:`rac.evaluation.rendering`.
"""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rac.data.splits import topic_of
from rac.detector.labels import IGNORE, UNSUPPORTED, char_labels, word_at, word_labels
from rac.detector.model import LM_TOKENIZER_DIR, read_detector_info
from rac.evaluation.catalogue import (
    DEFINITIONS,
    DETECTOR_METRIC,
    DETECTOR_METRICS,
    FAITHFULNESS_METRICS,
    HELDOUT_SCOPE,
    MIXTURE_METRICS,
    ROW_METRICS,
    metric_status,
)
from rac.evaluation.config import EvaluateConfig
from rac.evaluation.reference import corpus_bleu
from rac.evaluation.significance import compare_systems, metric_validity, ranking_auc
from rac.text import passage_texts


def _mean(values: Sequence[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.fmean(nums) if nums else None


def _figure(values: Sequence[Any], status: str | None) -> float | str | None:
    return status if status else _mean(values)


def system_summary(rows: list[dict[str, Any]], status: dict[str, str | None]) -> dict[str, Any]:
    """Mean per-row scores and corpus BLEU of one system's evaluated rows."""
    done = [r for r in rows if r["error"] is None]
    with_ref = [r for r in done if (r.get("question") or "").strip()]
    summary: dict[str, Any] = {"rows": len(rows), "evaluated": len(done), "error_rows": len(rows) - len(done),
                               "with_reference": len(with_ref)}
    if with_ref:
        bleu = corpus_bleu([r["prediction"] for r in with_ref], [r["question"] for r in with_ref])
        summary["bleu_corpus"], summary["bleu_signature"] = bleu["score"], bleu["signature"]
    else:
        summary["bleu_corpus"], summary["bleu_signature"] = None, None
    for metric in ROW_METRICS:
        summary[metric] = _figure([r.get(metric) for r in done], status[metric])
    return summary


def significance(generated: dict[str, list[dict[str, Any]]], status: dict[str, str | None],
                 samples: int, seed: int) -> list[dict[str, Any]]:
    """Paired comparisons of every pair of systems on every numeric per-row metric."""
    out = []
    for (name_a, rows_a), (name_b, rows_b) in itertools.combinations(generated.items(), 2):
        by_id_b = {r["id"]: r for r in rows_b}
        for metric in ROW_METRICS:
            if status[metric]:
                continue
            pairs = [(r[metric], by_id_b[r["id"]].get(metric)) for r in rows_a
                     if r["error"] is None and r["id"] in by_id_b and by_id_b[r["id"]]["error"] is None]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if len(pairs) < 2:
                continue
            result = compare_systems([a for a, _ in pairs], [b for _, b in pairs], samples=samples, seed=seed)
            out.append({"system_a": name_a, "system_b": name_b, "metric": metric, **result})
    return out


def mixture_sweep(mixture_rows: list[dict[str, Any]], status: dict[str, str | None]) -> list[dict[str, Any]]:
    """Per alpha: the realised mixing rate and the mean faithfulness and fluency of C- (and of C+)."""
    out = []
    for alpha in sorted({r["alpha"] for r in mixture_rows}):
        rows = [r for r in mixture_rows if r["alpha"] == alpha]
        done = [r for r in rows if r["error"] is None]
        entry: dict[str, Any] = {"alpha": alpha, "rows": len(rows), "evaluated": len(done),
                                 "mean_mixing_rate": _mean([r["mixing_rate"] for r in done])}
        for side, name in (("rejected", "C-"), ("chosen", "C+")):
            entry[name] = {m: _figure([r.get(f"{side}_{m}") for r in done], status[m]) for m in MIXTURE_METRICS}
        out.append(entry)
    return out


def validity(mixture_rows: list[dict[str, Any]], status: dict[str, str | None],
             metrics: Sequence[str] = FAITHFULNESS_METRICS,
             scopes: list[tuple[Any, list[dict[str, Any]]]] | None = None) -> list[dict[str, Any]]:
    """Metric validity of every numeric score of ``metrics``, per scope: by default each alpha
    and all alphas together; ``scopes`` gives ``(name, rows)`` instead (the detector's held-out topics)."""
    out = []
    done = [r for r in mixture_rows if r["error"] is None]
    if scopes is None:
        scopes = [(a, [r for r in done if r["alpha"] == a]) for a in sorted({r["alpha"] for r in done})]
        if len(scopes) > 1:
            scopes.append(("all", done))
    for metric in metrics:
        if status.get(metric):
            continue
        for scope, rows in scopes:
            rows = [r for r in rows if r["error"] is None and r.get(f"chosen_{metric}") is not None
                    and r.get(f"rejected_{metric}") is not None and r.get("mixing_rate") is not None]
            result = metric_validity([r[f"chosen_{metric}"] for r in rows], [r[f"rejected_{metric}"] for r in rows],
                                     [r["mixing_rate"] for r in rows])
            out.append({"metric": metric, "alpha": scope, **result})
    return out


def example_questions(generated: dict[str, list[dict[str, Any]]], k: int, seed: int) -> list[dict[str, Any]]:
    """``k`` test rows (seeded choice among rows every system evaluated) with every system's question."""
    by_system = {name: {r["id"]: r for r in rows} for name, rows in generated.items()}
    if not by_system or k == 0:
        return []
    ids = sorted(set.intersection(*({i for i, r in rows.items() if r["error"] is None}
                                    for rows in by_system.values())))
    chosen = sorted(random.Random(seed).sample(ids, min(k, len(ids))))
    out = []
    for i in chosen:
        first = next(iter(by_system.values()))[i]
        out.append({"id": i, "query": first["query"], "gold_question": first.get("question"),
                    "passages": passage_texts(first["passages"]),
                    "questions": {name: {"prediction": rows[i]["prediction"],
                                         **{m: rows[i].get(m) for m in ("parent_f1", "semantic_support", "entailment")}}
                                  for name, rows in by_system.items()}})
    return out


def build_report(cfg: EvaluateConfig, generated: dict[str, list[dict[str, Any]]],
                 mixture_rows: list[dict[str, Any]], embedding_dir: Path | None) -> dict[str, Any]:
    """Every figure of the evaluation, as JSON-ready data."""
    status = metric_status(cfg, embedding_dir)
    return {
        "input_dir": cfg.input_dir, "splits": cfg.splits,
        "systems": {name: {"path": s.path, "prompt": s.prompt, **system_summary(generated[name], status)}
                    for name, s in ((s.name, s) for s in cfg.systems)},
        "metric_status": {k: v for k, v in status.items() if v},
        "embedding_model": str(embedding_dir) if embedding_dir else None,
        "nli_model": cfg.nli_model, "fluency_model": cfg.fluency_model,
        "significance": significance(generated, status, cfg.bootstrap_samples, cfg.seed),
        "mixtures": mixture_sweep(mixture_rows, status),
        "metric_validity": validity(mixture_rows, status),
        "examples": example_questions(generated, cfg.num_examples, cfg.seed),
        "detector": detector_section(cfg, generated, mixture_rows, status) if cfg.detector else None,
        "definitions": DEFINITIONS,
    }


def detector_note(info: dict[str, Any]) -> str:
    """The sentence the report shows beside detector support."""
    dirs = ", ".join(info.get("negatives_dirs") or []) or "its negatives"
    return (f"The detector was trained on this run's negatives ({dirs}), so it favours a model trained against "
            f"them (RAC's joint objective uses the same negatives): read detector support beside the scores above, "
            f"not instead of them.")


def detector_section(cfg: EvaluateConfig, generated: dict[str, list[dict[str, Any]]],
                     mixture_rows: list[dict[str, Any]], status: dict[str, str | None]) -> dict[str, Any]:
    """Detector support per system, and the validity of every faithfulness score on the mixture
    pairs of topics the detector was not trained on (the same pairs for each score)."""
    # transformers here, not at the top: rac.evaluation is imported by the serving app and must stay light.
    from transformers import AutoTokenizer

    info = read_detector_info(cfg.detector)
    seen = set(info.get("train_topics") or [])
    heldout = [r for r in mixture_rows if r["error"] is None and topic_of(r) not in seen]
    lm_dir = Path(cfg.detector) / LM_TOKENIZER_DIR
    lm_tokenizer = AutoTokenizer.from_pretrained(str(lm_dir)) if lm_dir.is_dir() else None
    for r in heldout:
        r["rejected_char_labels"] = None if lm_tokenizer is None or r.get("provenance") is None else char_labels(
            r["rejected"], r.get("rejected_token_ids") or [], r["provenance"], lm_tokenizer)
    entries = validity(heldout, status, metrics=DETECTOR_METRICS, scopes=[(HELDOUT_SCOPE, heldout)]) \
        if heldout else []
    for e in entries:
        if e["metric"] == DETECTOR_METRIC:
            e["token_auc"] = token_auc(heldout)
    systems = {}
    for name, rows in generated.items():
        done = [r for r in rows if r["error"] is None]
        systems[name] = {"evaluated": len(done), DETECTOR_METRIC: _mean([r.get(DETECTOR_METRIC) for r in done])}
    return {"path": cfg.detector, "note": detector_note(info), "trained_on": info.get("negatives_dirs"),
            "train_topics": len(seen), "heldout_pairs": len(heldout), "systems": systems,
            "metric_validity": entries}


# ----------------------------------------------------------------------------- the detector's token AUC


def token_labels(question: str, chars: Sequence[int], tokens: Sequence[Any]) -> list[tuple[float, int]]:
    """``(p, label)`` of each scored token of a negative: its probability and its word's provenance label."""
    labelled = word_labels(question, chars)
    words = [w for w, _ in labelled]
    out = []
    for t in tokens:
        start, p = (t["start"], t["p"]) if isinstance(t, dict) else (t.start, t.p)
        i = word_at(words, start)
        if i is not None and labelled[i][1] != IGNORE:
            out.append((float(p), labelled[i][1]))
    return out


def token_auc(rows: Sequence[dict[str, Any]]) -> float | None:
    """P(p of an ungrounded content token > p of a grounded one) over the C- of ``rows``
    (``rejected_char_labels`` and ``rejected_detector_tokens``); None without both kinds."""
    pos, neg = [], []
    for r in rows:
        if r.get("rejected_char_labels") is None or not r.get("rejected_detector_tokens"):
            continue
        for p, label in token_labels(r["rejected"], r["rejected_char_labels"], r["rejected_detector_tokens"]):
            (pos if label == UNSUPPORTED else neg).append(p)
    return ranking_auc(pos, neg) if pos and neg else None
