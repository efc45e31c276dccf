"""Rows that fail alone: a batch whose call raises is run again row by row.

A Ray Data stage hands many rows to one model call. When that call raises (out of memory,
one malformed row), the rows are run again one at a time, so that only the row that raises
gets an ``error`` and every other row gets its result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def batch_then_rows(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T]) -> list[R | Exception]:
    """``fn(items)``; if that raises, ``fn([item])`` for each item.

    Returns one entry per item, in order: its result, or the exception ``fn`` raised on that
    item alone.
    """
    items = list(items)
    try:
        results = list(fn(items))
    except Exception as e:  # noqa: BLE001 - recorded on the rows, never kills the run
        if len(items) == 1:
            return [e]
        logger.warning("batch of %d failed (%s: %s); retrying row by row", len(items), type(e).__name__, e)
        return [result for item in items for result in batch_then_rows(fn, [item])]
    if len(results) != len(items):
        raise RuntimeError(f"{fn} returned {len(results)} results for {len(items)} rows")
    return results


def row_error(prefix: str, error: Exception) -> str:
    """The ``error`` value of a row whose call raised: ``<prefix><ExceptionType>: <message>``."""
    return f"{prefix}{type(error).__name__}: {error}"
