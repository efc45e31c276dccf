"""How well the detector tracks provenance: token-level AUC, and the pair scores the
evaluation report's validity table takes (:func:`rac.evaluation.report.validity`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rac.detector.labels import IGNORE, UNSUPPORTED, word_at, word_labels

#: The scope of the validity rows computed on topics the detector never saw.
HELDOUT_SCOPE = "held-out topics"


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
    from rac.evaluation.significance import ranking_auc

    pos, neg = [], []
    for r in rows:
        if r.get("rejected_char_labels") is None or not r.get("rejected_detector_tokens"):
            continue
        for p, label in token_labels(r["rejected"], r["rejected_char_labels"], r["rejected_detector_tokens"]):
            (pos if label == UNSUPPORTED else neg).append(p)
    return ranking_auc(pos, neg) if pos and neg else None


def detector_columns(result: Any) -> dict[str, Any]:
    """A :class:`~rac.detector.model.DetectorResult` as row columns: support and token scores."""
    return {"detector_support": result.support,
            "detector_tokens": [{"start": t.start, "end": t.end, "p": t.p} for t in result.tokens]}


def score_pairs(rows: list[dict[str, Any]], detector: Any, embedding_dir: Path | None) -> None:
    """Add, in place, PARENT-G, semantic support and detector support of C+ and C- of each row
    (``chosen_<metric>``, ``rejected_<metric>``, as the evaluation's mixture rows), and the
    detector's token scores of C- (``rejected_detector_tokens``)."""
    from rac.evaluation.grounding import parent_grounding
    from rac.evaluation.scorers import SemanticSupportScorer, passage_texts

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
            cols = detector_columns(d)
            r[f"{side}_detector_support"] = cols["detector_support"]
            if side == "rejected":
                r["rejected_detector_tokens"] = cols["detector_tokens"]
