"""Seeded splits by topic: T1 (SFT half), T2 (preference half) and a held-out test split.

A topic's rows all land in one split, so no query is seen in training and in test.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from rac.data.schema import SPLITS


def assign_splits(
    records: list[dict[str, Any]],
    fractions: Sequence[float] = (0.45, 0.45, 0.1),
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Set ``split`` to ``t1``, ``t2`` or ``test`` on every record (returns new dicts).

    Topics (rows without ``topic_id`` count as their own topic) are shuffled with ``seed``
    and cut by ``fractions`` of the topic count, so the same data and seed always give the
    same splits. Every split with a non-zero fraction gets at least one topic when there
    are enough topics.
    """
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    topics = sorted({topic_of(r) for r in records})
    random.Random(seed).shuffle(topics)
    counts = [int(round(f * len(topics))) for f in fractions]
    # Rounding can over- or under-shoot; give the remainder to the first split and make
    # sure no requested split is empty when there are topics to spare.
    for i, f in enumerate(fractions):
        if f > 0 and counts[i] == 0 and len(topics) >= len(SPLITS):
            counts[i] = 1
    counts[0] = len(topics) - sum(counts[1:])
    topic_split: dict[str, str] = {}
    start = 0
    for name, n in zip(SPLITS, counts, strict=True):
        for t in topics[start:start + n]:
            topic_split[t] = name
        start += n
    return [{**r, "split": topic_split[topic_of(r)]} for r in records]


def topic_of(row: dict[str, Any]) -> str:
    """The topic a row belongs to, for every split by topic: its ``topic_id``, else a topic of
    its own (``id:<id>``, which no topic_id can equal)."""
    return str(row["topic_id"]) if row.get("topic_id") is not None else "id:" + str(row["id"])
