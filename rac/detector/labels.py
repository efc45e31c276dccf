"""Labels of the unsupported-span detector, from the negatives' provenance.

The mixture decoder records, for every token it generated, which model chose it
(``provenance``: 1 = the ungrounded model p_uncond, 0 = the grounded one). Those are the
labels, carried from the LM's tokens to the encoder's tokens through character offsets:

1. **LM tokens -> characters** (:func:`char_labels`). Token ``i`` covers the characters its
   decoding adds to the text: the common prefix of ``decode(ids[:i + 1])`` with
   ``decode(ids)`` grows from ``end_{i-1}`` to ``end_i``. A byte-level token that holds only
   part of a multi-byte character adds nothing (its prefix decodes to U+FFFD, which is not
   in the full text); its label passes to the next token that completes the character, and
   a character is unsupported when any token that contributed a byte to it is. The stored
   question is ``decode(ids)`` stripped (and cut after its first '?'), so offsets are shifted
   by the stripped leading whitespace.
2. **Characters -> words** (:func:`question_words`): the ``\\w+`` words of the question
   (Unicode-aware, as the lexical metrics split them). A word is unsupported when any of
   its characters is; punctuation and spaces carry no label.
3. **Words -> encoder tokens** (:func:`token_targets`): each encoder token of the question
   takes the label of the word it starts in.

Function words and the question template ("are you looking for ...", the words of
:data:`rac.text.STOPWORDS`) carry no label: they are masked from the loss
(-100) and left out of every score, because both models produce them whatever the passages
say, so their provenance is a coin flip. Only *content words* are labelled and scored. The
gold question C+ of a row is a fully supported example: each of its content words is
labelled 0.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rac.text import STOPWORDS, WORD

#: Label of a token the loss ignores (transformers' convention).
IGNORE = -100
SUPPORTED = 0
UNSUPPORTED = 1


@dataclass(frozen=True)
class Word:
    """One ``\\w+`` word of a question: character span and whether it is a content word."""

    start: int
    end: int
    content: bool


def is_content_word(word: str) -> bool:
    """True unless ``word`` is a function word or part of the question template (STOPWORDS)."""
    return unicodedata.normalize("NFKC", word).casefold() not in STOPWORDS


def question_words(text: str) -> list[Word]:
    """The ``\\w+`` words of ``text`` with their character spans (in ``text`` itself)."""
    return [Word(m.start(), m.end(), is_content_word(m.group())) for m in WORD.finditer(text)]


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def token_char_spans(token_ids: Sequence[int], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """``decode(token_ids)`` and the character span each token adds to it (empty for a token
    that completes no character, such as the first bytes of a multi-byte character)."""
    ids = list(token_ids)
    full = tokenizer.decode(ids, skip_special_tokens=True)
    spans, end = [], 0
    for i in range(len(ids)):
        prefix = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        new_end = max(end, _common_prefix(prefix, full))
        spans.append((end, new_end))
        end = new_end
    if spans and end < len(full):  # whatever the last token leaves (never seen; defensive)
        spans[-1] = (spans[-1][0], len(full))
    return full, spans


def char_labels(text: str, token_ids: Sequence[int], provenance: Sequence[int], tokenizer: Any) -> list[int] | None:
    """Per character of ``text`` (a stored negative), 1 if an ungrounded token supplied it, else 0.

    Parameters
    ----------
    text
        The question as the negatives stage stored it (``rejected``).
    token_ids, provenance
        The generated tokens and, per token, 1 for the ungrounded model, 0 for the grounded one.
    tokenizer
        The tokenizer of the models that decoded the negative.

    Returns
    -------
    list[int] | None
        One label per character of ``text``; None when ``text`` is not the decoding of
        ``token_ids`` (another tokenizer, or an edited row): such a row cannot be labelled.
    """
    if len(token_ids) != len(provenance):
        return None
    full, spans = token_char_spans(token_ids, tokenizer)
    lead = len(full) - len(full.lstrip())
    if not full[lead:].startswith(text):
        return None
    labels = [SUPPORTED] * len(full)
    pending = 0  # an ungrounded token that completed no character marks the next character
    for (start, end), prov in zip(spans, provenance, strict=True):
        flag = UNSUPPORTED if (prov or pending) else SUPPORTED
        if start == end:
            pending = flag
            continue
        pending = 0
        for c in range(start, end):
            labels[c] = flag
    return labels[lead: lead + len(text)]


def word_labels(text: str, chars: Sequence[int] | None) -> list[tuple[Word, int]]:
    """Each word of ``text`` with its label: ``IGNORE`` for a function word, else 1 if any of
    its characters is unsupported (``chars``), else 0. ``chars`` None: every content word 0
    (a gold question)."""
    out = []
    for w in question_words(text):
        if not w.content:
            out.append((w, IGNORE))
        elif chars is None:
            out.append((w, SUPPORTED))
        else:
            out.append((w, UNSUPPORTED if any(chars[w.start:w.end]) else SUPPORTED))
    return out


def word_at(words: Sequence[Word], position: int) -> int | None:
    """Index of the word holding character ``position``, or None (space, punctuation)."""
    for i, w in enumerate(words):
        if w.start <= position < w.end:
            return i
        if w.start > position:
            return None
    return None


def token_targets(offsets: Sequence[tuple[int, int]], labelled: Sequence[tuple[Word, int]]) -> list[int]:
    """The label of each encoder token of the question from the word it starts in
    (``IGNORE`` for tokens outside any content word)."""
    words = [w for w, _ in labelled]
    out = []
    for start, end in offsets:
        i = word_at(words, start) if end > start else None
        out.append(IGNORE if i is None else labelled[i][1])
    return out
