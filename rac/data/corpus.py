"""The passage corpus D retrieves from.

Qulac and ClariQ come without their ClueWeb documents, so the corpus is built from the
data sets' own descriptions of the information needs: every distinct ``topic_desc`` and
``facet_desc`` (the demo set: topic descriptions and facet passages) becomes a passage.
Texts are cleaned (:func:`rac.data.loaders.clean_text`), deduplicated on their
case-folded text, and given ids derived from that text (``p`` + 16 hex digits of its
SHA-1), so a passage keeps its id whatever order or file it is loaded from.
"""

from __future__ import annotations

from typing import Any

from rac.data.loaders import clean_text, stable_hash


def passage_id(text: str) -> str:
    """The stable id of a passage text."""
    return "p" + stable_hash(" ".join(text.casefold().split()))


def build_corpus(documents: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Deduplicate source documents into passages ``{id, text, source}``.

    A text seen under two sources keeps the first source. Documents that already carry an
    ``id`` (a user-supplied corpus) keep it.
    """
    passages: dict[str, dict[str, str]] = {}
    for doc in documents:
        text = clean_text(doc["text"])
        if not text:
            continue
        pid = doc.get("id") or passage_id(text)
        key = " ".join(text.casefold().split())
        if key not in passages:
            passages[key] = {"id": str(pid), "text": text, "source": doc.get("source", "")}
    return list(passages.values())
