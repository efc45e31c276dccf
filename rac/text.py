"""The words that the metrics and the detector both see: passage texts, ``\\w+`` words, stopwords.

A leaf module (nothing of ``rac`` below it). The lexical metrics (:mod:`rac.evaluation.grounding`)
drop :data:`STOPWORDS` before scoring, and the unsupported-span detector (:mod:`rac.detector.labels`)
leaves the same words unlabelled: both measure a question's content, not its template.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

#: A word: a run of Unicode word characters ("Zürich" and "東京" are words).
WORD = re.compile(r"\w+")

#: English function words (a short list in the spirit of the SMART/NLTK lists).
FUNCTION_WORDS = frozenset("""
a about above after again against all am an and any are aren as at be because been before being below
between both but by can cannot could couldn did didn do does doesn doing don down during each few for
from further had hadn has hasn have haven having he her here hers herself him himself his how i if in
into is isn it its itself just ll me more most my myself no nor not now of off on once only or other
our ours ourselves out over own re s same shan she should shouldn so some such t than that the their
theirs them themselves then there these they this those through to too under until up ve very was
wasn we were weren what when where which while who whom why will with won would wouldn y you your
yours yourself yourselves d m o ain ma mightn mustn needn
""".split())

#: The template of a clarifying question ("are you looking for", "would you like to know
#: about"): words every question carries whatever its passages say.
QUESTION_SCAFFOLD = frozenset("""
looking look want wanted wanting interested interest like know learn find finding mean meant
tell specific specifically particular kind kinds type types sort please thinking referring
""".split())

#: Tokens that are not content: dropped from question and passages alike.
STOPWORDS = FUNCTION_WORDS | QUESTION_SCAFFOLD


def passage_texts(passages: Sequence[Any] | None) -> list[str]:
    """Passage texts from record-schema passages (dicts with ``text``) or plain strings."""
    out = []
    for p in passages or []:
        text = p.get("text") if isinstance(p, dict) else p
        if text and text.strip():
            out.append(text)
    return out
