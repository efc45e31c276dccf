"""The retriever interface shared by the Elasticsearch and embedded BM25 backends."""

from __future__ import annotations

import re
from typing import Any, Protocol

#: One retrieved passage: ``{"id": str, "text": str, "score": float}``.
Hit = dict[str, Any]


class RetrievalError(RuntimeError):
    """Retrieval cannot go on (the message says what to change)."""


class ServerUnavailableError(RetrievalError):
    """The search server did not answer after the configured retries."""


class IndexMissingError(RetrievalError):
    """The configured index does not exist (run ``python -m jobs.index`` first)."""


class Retriever(Protocol):
    """What the retrieval stage and the serving app need from a backend."""

    def search(self, queries: list[str], top_k: int) -> list[list[Hit] | str]:
        """Top-``top_k`` passages per query, best first; a string is that query's error.

        Raises :class:`RetrievalError` when no query can be answered (server down).
        """
        ...

    def close(self) -> None: ...


# Approximates the Unicode word segmentation (UAX #29) of Elasticsearch's standard
# tokenizer: words and numbers, joined across an inner apostrophe or period ("don't",
# "u.s", "3.5") and digit groups across commas ("1,000").
_TOKEN_RE = re.compile(r"\w+(?:(?:['\u2019.]|(?<=\d),(?=\d))\w+)*")


def bm25_terms(text: str) -> list[str]:
    """The terms BM25 indexes and searches: lower-cased word tokens, as Elasticsearch's
    ``standard`` analyzer gives them (so both backends score the same terms)."""
    return _TOKEN_RE.findall(text.lower())


def query_error(query: Any, max_chars: int) -> str | None:
    """Why ``query`` cannot be searched, or None."""
    if not isinstance(query, str):
        return f"query must be a string, got {type(query).__name__}"
    if not query.strip():
        return "empty query"
    if len(query) > max_chars:
        return f"query has {len(query)} characters, more than retriever.max_query_chars={max_chars}"
    if not bm25_terms(query):
        return "query has no searchable words"
    return None
