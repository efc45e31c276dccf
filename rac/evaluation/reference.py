"""Reference metrics: the generated question against the gold clarifying question C+.

- BLEU from sacrebleu (corpus BLEU, and smoothed sentence BLEU per row), on sacrebleu's
  0-100 scale, with its signature so the figure can be reproduced.
- ROUGE-L: the LCS-based F-measure of Lin (2004), "ROUGE: A Package for Automatic
  Evaluation of Summaries", Sec. 3.1: ``R = LCS/|ref|``, ``P = LCS/|hyp|``,
  ``F = (1 + beta^2) R P / (R + beta^2 P)`` with beta = 1 (as rouge-score reports it), on
  case-folded Unicode ``\\w+`` tokens (rouge-score's own tokenizer drops non-ASCII words).
- METEOR (Banerjee & Lavie, 2005) needs WordNet synonyms. NLTK's implementation is used
  when the WordNet corpus is already on this machine (``nltk.data.find``; nothing is ever
  downloaded); otherwise ``meteor`` is :data:`NOT_AVAILABLE_OFFLINE`. ``meteor_exact`` is
  always given: the same METEOR formula (NLTK's code, alpha 0.9, beta 3, gamma 0.5) with
  exact word matches only — no stemming, no synonyms — so it is a lower bound of METEOR
  and must not be compared with published METEOR figures.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from rac.evaluation.grounding import metric_words

NOT_AVAILABLE_OFFLINE = "not available offline"


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences (O(|a| |b|) time, O(|b|) space)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-L precision, recall and F1 (Lin, 2004) of ``prediction`` against ``reference``.

    Returns
    -------
    dict[str, float]
        ``precision``, ``recall``, ``f1`` in [0, 1]; all 0 when either side has no token.
    """
    hyp, ref = metric_words(prediction), metric_words(reference)
    lcs = lcs_length(hyp, ref)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return {"precision": precision, "recall": recall, "f1": 2 * precision * recall / (precision + recall)}


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (0-100; exponential smoothing, effective order)."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, [reference]).score)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """sacrebleu's corpus BLEU (0-100) of aligned predictions and single references.

    Returns
    -------
    dict
        ``score``, the n-gram ``precisions``, ``brevity_penalty`` and sacrebleu's ``signature``.
    """
    from sacrebleu.metrics import BLEU

    bleu = BLEU()
    result = bleu.corpus_score(list(predictions), [list(references)])
    return {"score": float(result.score), "precisions": [float(p) for p in result.precisions],
            "brevity_penalty": float(result.bp), "signature": str(bleu.get_signature())}


class _NoSynonyms:
    """A WordNet stand-in with no synsets: NLTK's METEOR then matches exact words only."""

    @staticmethod
    def synsets(*_: Any, **__: Any) -> list[Any]:
        return []


class _NoStemmer:
    @staticmethod
    def stem(word: str) -> str:
        return word


@functools.lru_cache(maxsize=1)
def wordnet_available() -> bool:
    """True when NLTK finds the WordNet corpus on this machine (it is never downloaded)."""
    try:
        import nltk

        nltk.data.find("corpora/wordnet")
        return True
    except (ImportError, LookupError):
        return False


def meteor_exact(prediction: str, reference: str) -> float:
    """METEOR with exact matches only (no stemming, no synonyms), in [0, 1]; see the module docstring."""
    from nltk.translate.meteor_score import single_meteor_score

    hyp, ref = metric_words(prediction), metric_words(reference)
    return float(single_meteor_score(ref, hyp, preprocess=str, stemmer=_NoStemmer(), wordnet=_NoSynonyms()))


def meteor(prediction: str, reference: str) -> float | str:
    """Full METEOR (exact, Porter stem and WordNet synonym matches) or :data:`NOT_AVAILABLE_OFFLINE`."""
    if not wordnet_available():
        return NOT_AVAILABLE_OFFLINE
    from nltk.corpus import wordnet
    from nltk.translate.meteor_score import single_meteor_score

    return float(single_meteor_score(metric_words(reference), metric_words(prediction), preprocess=str,
                                     wordnet=wordnet))


def reference_scores(prediction: str, reference: str | None) -> dict[str, float | str | None]:
    """Per-row reference metrics; all None when the row has no gold question."""
    if reference is None or not reference.strip():
        return {"bleu": None, "rouge_l": None, "meteor": None, "meteor_exact": None}
    return {"bleu": sentence_bleu(prediction, reference), "rouge_l": rouge_l(prediction, reference)["f1"],
            "meteor": meteor(prediction, reference), "meteor_exact": meteor_exact(prediction, reference)}
