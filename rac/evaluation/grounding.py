"""PARENT-style data grounding of a clarifying question in its passages.

PARENT (Dhingra et al., ACL 2019, "Handling Divergent Reference Texts when Evaluating
Table-to-Text Generation", Sec. 3) scores a generation G against a table T and a
reference R:

- entailed precision, per n-gram order n (Eq. 2),
  ``P_n = sum_g [Pr(g in R) + Pr(g not in R) * w(g)] #_G(g) / sum_g #_G(g)``,
  where ``w(g) = Pr(g <= T)`` is the probability that n-gram g is entailed by the table;
  with the word-overlap entailment model (Sec. 3.2),
  ``w(g) = sum_j 1(g_j in T_bar) / n``, the share of g's tokens found anywhere in the
  table, and the precision is the geometric mean of ``P_1 .. P_4``;
- entailed recall ``E_r = R_r^(1 - lambda) * R_t^lambda``, where the recall against the
  table is ``R_t = 1/K sum_k LCS(r_k, G) / |r_k|`` over the K records r_k of the table;
- ``F = 2 P E_r / (P + E_r)``.

How it is adapted here (the "table only" reading of PARENT, as in PARENT-T of Wang et al.,
ACL 2020, because a served question has no reference):

1. The table T is the list of passages; each passage is one record r_k.
2. No reference: ``Pr(g in R) = 0`` in Eq. 2, so ``P_n = sum_g w(g) #_G(g) / sum_g #_G(g)``,
   and lambda = 1, so the recall is ``R_t`` alone.
3. Text is NFKC-normalised, case-folded and split on ``\\w+`` (Unicode word characters, so
   "Zürich" or "東京" are words), and only *content* tokens count: the tokens of
   :data:`STOPWORDS` (English function words and the scaffolding of a clarifying question,
   "are you looking for ...") are dropped from the question and the passages before
   anything else, so the score measures the question's content, not its template. The
   n-grams of the question are taken over its content tokens.
4. Orders: ``n = 1 .. min(4, L)`` where L is the number of content tokens of the question;
   PARENT would give an order with no n-gram a precision of 0 (smoothed to 1e-5), which
   would make any question of fewer than four content words ungrounded.
5. Record recall: the record value of a passage is its *set* of content words, and
   ``LCS(r_k, G) / |r_k|`` becomes the share of that set that the question contains. A
   question reuses a passage's facts in its own word order, so the LCS of the paper (made
   for short, ordered attribute values) would punish a faithful paraphrase. Passages
   without a content word are not records (they carry no fact).
6. An empty question (no content token) or no passage with a content word scores 0 on
   all three figures.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence

from rac.text import STOPWORDS, WORD

#: Highest n-gram order of the entailed precision (PARENT uses 4).
MAX_ORDER = 4


def metric_words(text: str | None) -> list[str]:
    """The words the lexical metrics compare (ROUGE-L, METEOR, PARENT): NFKC-normalised,
    case-folded ``\\w+`` tokens of ``text`` (Unicode-aware; not the retrieval analyzer,
    :func:`rac.retrieval.base.bm25_terms`, which joins words across apostrophes and periods)."""
    if not text:
        return []
    return WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def content_tokens(text: str | None) -> list[str]:
    """The tokens of ``text`` that are not in :data:`STOPWORDS`, in order."""
    return [t for t in metric_words(text) if t not in STOPWORDS]


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def entailment_probability(ngram: Sequence[str], table_tokens: set[str] | frozenset[str]) -> float:
    """``w(g)`` of PARENT's word-overlap model: the share of the n-gram's tokens in the table."""
    return sum(tok in table_tokens for tok in ngram) / len(ngram)


def entailed_precisions(prediction_tokens: Sequence[str], table_tokens: set[str] | frozenset[str],
                        max_order: int = MAX_ORDER) -> list[float]:
    """``P_n`` (PARENT Eq. 2 without a reference) for ``n = 1 .. min(max_order, L)``."""
    precisions = []
    for n in range(1, min(max_order, len(prediction_tokens)) + 1):
        counts = _ngrams(prediction_tokens, n)
        total = sum(counts.values())
        precisions.append(sum(c * entailment_probability(g, table_tokens) for g, c in counts.items()) / total)
    return precisions


def table_recall(prediction_tokens: Iterable[str], records: Sequence[set[str]]) -> float:
    """``R_t``: mean over records (passages) of the share of a record's content words in the question."""
    predicted = set(prediction_tokens)
    records = [r for r in records if r]
    if not records:
        return 0.0
    return sum(len(r & predicted) / len(r) for r in records) / len(records)


def parent_grounding(prediction: str, passages: list[str]) -> dict[str, float]:
    """PARENT-style grounding of ``prediction`` in ``passages`` (no reference).

    The passages play PARENT's table: precision is the entailed share of the question's
    content n-grams (orders 1-4, geometric mean), recall is the share of each passage's
    content words the question covers (averaged over passages), F1 their harmonic mean.
    See the module docstring for the formulation (Dhingra et al., 2019) and each
    adaptation made to it.

    Parameters
    ----------
    prediction
        The generated clarifying question.
    passages
        Passage texts the question should rest on (the "table").

    Returns
    -------
    dict[str, float]
        ``precision``, ``recall`` and ``f1``, each in [0, 1]; all 0 for an empty
        question or passages without a content word.
    """
    zeros = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    prediction_tokens = content_tokens(prediction)
    records = [set(content_tokens(p)) for p in passages or []]
    table_tokens = set().union(*records) if records else set()
    if not prediction_tokens or not table_tokens:
        return zeros
    precisions = entailed_precisions(prediction_tokens, table_tokens)
    # Geometric mean; one order with no entailed n-gram makes it 0, as in PARENT.
    precision = 0.0 if min(precisions) == 0.0 else math.exp(sum(math.log(p) for p in precisions) / len(precisions))
    recall = table_recall(prediction_tokens, records)
    f1 = 0.0 if precision + recall == 0.0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}
