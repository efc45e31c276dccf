"""Reference BM25 scorer: Lucene's BM25 as Elasticsearch applies it, written from the
Lucene sources (BM25Similarity, SmallFloat) independently of the code under test.

score(q, d) = sum over query tokens t in d of
    idf(t) * (k1 + 1) * tf / (tf + k1 * (1 - b + b * L(d) / avgdl))
idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))
L(d): the document length after Lucene's one-byte norm encoding (SmallFloat.intToByte4),
avgdl: the exact mean document length. Elasticsearch keeps the (k1 + 1) factor that
Lucene 8+ dropped (LegacyBM25Similarity).
"""

from __future__ import annotations

import math
import re
from collections import Counter


def _long_to_int4(i: int) -> int:
    num_bits = i.bit_length()
    if num_bits < 4:
        return i
    shift = num_bits - 4
    encoded = (i >> shift) & 0x07
    return encoded | ((shift + 1) << 3)


def _int4_to_long(i: int) -> int:
    bits = i & 0x07
    shift = (i >> 3) - 1
    return bits if shift == -1 else (bits | 0x08) << shift


_MAX_INT4 = _long_to_int4(2**31 - 1)
_NUM_FREE_VALUES = 255 - _MAX_INT4


def lucene_norm_length(length: int) -> int:
    """The document length Lucene scores with: encode to one byte, decode back."""
    if length < _NUM_FREE_VALUES:
        return length
    byte = _NUM_FREE_VALUES + _long_to_int4(length - _NUM_FREE_VALUES)
    return min(_NUM_FREE_VALUES + _int4_to_long(byte - _NUM_FREE_VALUES), 2**31 - 1)


def simple_tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


class ReferenceBM25:
    def __init__(self, docs: dict[str, str], k1: float = 1.2, b: float = 0.75, quantize: bool = True):
        self.k1, self.b = k1, b
        self.tfs = {d: Counter(simple_tokens(t)) for d, t in docs.items()}
        lengths = {d: sum(c.values()) for d, c in self.tfs.items()}
        self.avgdl = sum(lengths.values()) / len(lengths)
        self.norm_len = {d: (lucene_norm_length(n) if quantize else n) for d, n in lengths.items()}
        self.df = Counter(t for c in self.tfs.values() for t in c)
        self.n = len(docs)

    def idf(self, term: str) -> float:
        df = self.df[term]
        return math.log(1 + (self.n - df + 0.5) / (df + 0.5))

    def score(self, query: str, doc_id: str) -> float:
        tf, total = self.tfs[doc_id], 0.0
        denom_len = self.k1 * (1 - self.b + self.b * self.norm_len[doc_id] / self.avgdl)
        for term in simple_tokens(query):
            if tf[term]:
                total += self.idf(term) * (self.k1 + 1) * tf[term] / (tf[term] + denom_len)
        return total

    def scores(self, query: str) -> dict[str, float]:
        return {d: s for d in self.tfs if (s := self.score(query, d)) > 0}
