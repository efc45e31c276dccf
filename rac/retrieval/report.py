"""Human-readable views of retrieval output."""

from __future__ import annotations

import textwrap
from typing import Any


def format_examples(records: list[dict[str, Any]], width: int = 100, max_passages: int = 3) -> str:
    """Queries beside their retrieved passages (and the gold question, where known)."""
    blocks = []
    for rec in records:
        lines = [f"query: {rec['query']!r}  [{rec['id']}]"]
        if rec.get("error"):
            lines.append(f"  error: {rec['error']}")
        for rank, p in enumerate((rec.get("passages") or [])[:max_passages], start=1):
            text = textwrap.shorten(p["text"], width=width - 24)
            lines.append(f"  {rank}. ({p['score']:.2f}) {text}")
        if rec.get("question"):
            lines.append(f"  gold question: {rec['question']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
