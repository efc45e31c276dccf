"""The one record schema every stage reads and writes.

A record is one (U_q, C+) example of the method:

===============  ==========================================================================
``id``           stable row id (string); every join between stages is by this id
``query``        the user's short, possibly ambiguous query U_q
``question``     the gold clarifying question C+ (null where none is known)
``topic_id``     the topic the query belongs to (splits never cut a topic), or null
``facet_id``     the facet (information need) the question targets, or null
``passages``     the retrieved passages D: list of ``{id, text, score}``, best first
``split``        ``t1`` (SFT half), ``t2`` (preference half) or ``test`` (``val``: topics a
                 study holds out of T1 and T2 to choose its settings on, rac.experiment)
``error``        null, or why this row could not be processed (the row is kept)
===============  ==========================================================================
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from rac.config import ConfigError

PASSAGE_TYPE = pa.struct([("id", pa.string()), ("text", pa.string()), ("score", pa.float64())])

RECORD_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("query", pa.string()),
    ("question", pa.string()),
    ("topic_id", pa.string()),
    ("facet_id", pa.string()),
    ("passages", pa.list_(PASSAGE_TYPE)),
    ("split", pa.string()),
    ("error", pa.string()),
])

REQUIRED_FIELDS = ("id", "query")
OPTIONAL_FIELDS = ("question", "topic_id", "facet_id", "passages", "split", "error")

CORPUS_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string())])

SPLITS = ("t1", "t2", "test")
#: Topics the study runner (rac.experiment) moves out of T1 and T2 to select settings on;
#: the topic split (rac.data.splits) never makes it.
VALIDATION_SPLIT = "val"


def check_splits(splits: list[str]) -> None:
    """Refuse an empty list of splits or a name that is not one of :data:`SPLITS` or ``val``."""
    names = [*SPLITS, VALIDATION_SPLIT]
    if not splits:
        raise ConfigError(f"splits must name at least one of {names}")
    unknown = [s for s in splits if s not in names]
    if unknown:
        raise ConfigError(f"unknown split(s) {unknown}; splits are {names}")


def make_record(
    id: str,
    query: str,
    question: str | None = None,
    topic_id: str | None = None,
    facet_id: str | None = None,
    passages: list[dict[str, Any]] | None = None,
    split: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """A record dict with every schema field present."""
    return {"id": id, "query": query, "question": question, "topic_id": topic_id,
            "facet_id": facet_id, "passages": passages, "split": split, "error": error}


def records_to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Records as an Arrow table of :data:`RECORD_SCHEMA` (missing optional fields null)."""
    rows = [{name: r.get(name) for name in RECORD_SCHEMA.names} for r in records]
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
