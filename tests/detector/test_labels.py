"""Labels from provenance: LM tokens -> characters -> words -> encoder tokens, exact on multi-byte text."""

from __future__ import annotations

import pytest

from rac.detector.labels import IGNORE, char_labels, token_char_spans, token_targets, word_labels


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A byte-level BPE tokenizer trained on the demo data: CJK, emoji and accents split into byte tokens."""
    from rac.testing.tiny import demo_texts, train_tiny_tokenizer

    return train_tiny_tokenizer(demo_texts())


TEXT = "Café 東京 🐆 naïve Zürich?"


def test_token_spans_cover_the_text_exactly_on_multibyte_characters(byte_tokenizer):
    ids = byte_tokenizer(" " + TEXT)["input_ids"]
    full, spans = token_char_spans(ids, byte_tokenizer)
    assert full == " " + TEXT
    assert len(ids) > len(full.split()) + 4, "multi-byte characters take several byte tokens each"
    # The spans tile the text in order; a token holding only part of a character adds nothing.
    assert spans[0][0] == 0 and spans[-1][1] == len(full)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert any(s == e for s, e in spans), "some byte token completes no character"
    assert "".join(full[s:e] for s, e in spans) == full


@pytest.mark.parametrize("word", ["東京", "🐆", "naïve", "Zürich", "Café"])
def test_an_ungrounded_multibyte_word_is_labelled_exactly(byte_tokenizer, word):
    ids = byte_tokenizer(" " + TEXT)["input_ids"]
    full, spans = token_char_spans(ids, byte_tokenizer)
    start, end = full.index(word), full.index(word) + len(word)
    # Provenance 1 on the tokens whose characters overlap the word, and on the byte tokens
    # (empty spans) just before them, which hold the first bytes of its first character.
    provenance = [1 if s < end and e > start else 0 for s, e in spans]
    for i in range(len(spans) - 2, -1, -1):
        if spans[i][0] == spans[i][1] and provenance[i + 1]:
            provenance[i] = 1
    chars = char_labels(TEXT, ids, provenance, byte_tokenizer)
    # Exactly the characters of those tokens (the word, and the space a token carries before it).
    covered = {c for (s, e), p in zip(spans, provenance, strict=True) if p for c in range(s, e)}
    assert chars == [1 if c + 1 in covered else 0 for c in range(len(TEXT))]
    assert all(chars[c - 1] == 1 for c in range(start, end))
    assert chars.count(1) <= len(word) + 1


def test_partial_byte_token_carries_its_label_to_the_character(byte_tokenizer):
    ids = byte_tokenizer(" 東")["input_ids"]
    _, spans = token_char_spans(ids, byte_tokenizer)
    assert len(ids) >= 2 and spans[-1] == (1, 2)
    # Only an early byte of 東 is ungrounded: the character is still unsupported.
    first_byte = next(i for i, (s, e) in enumerate(spans) if s == e)
    provenance = [1 if i == first_byte else 0 for i in range(len(ids))]
    assert char_labels("東", ids, provenance, byte_tokenizer) == [1]


def test_a_row_from_another_tokenizer_is_not_labelled(byte_tokenizer):
    ids = byte_tokenizer(" what is java?")["input_ids"]
    assert char_labels("what is python?", ids, [0] * len(ids), byte_tokenizer) is None
    assert char_labels("what is java?", ids, [0] * (len(ids) - 1), byte_tokenizer) is None


def test_function_words_and_the_template_carry_no_label():
    text = "are you looking for the Zürich zoo?"
    chars = [1] * len(text)  # every token ungrounded
    labels = {text[w.start:w.end]: label for w, label in word_labels(text, chars)}
    assert labels == {"are": IGNORE, "you": IGNORE, "looking": IGNORE, "for": IGNORE, "the": IGNORE,
                      "Zürich": 1, "zoo": 1}
    # The gold question: content words supported, the rest still unlabelled.
    gold = {text[w.start:w.end]: label for w, label in word_labels(text, None)}
    assert gold["Zürich"] == 0 and gold["looking"] == IGNORE
    # Encoder tokens take their word's label; punctuation and spaces none.
    offsets = [(0, 3), (4, 7), (24, 27), (27, 30), (31, 34), (34, 35), (0, 0)]
    assert token_targets(offsets, word_labels(text, chars)) == [IGNORE, IGNORE, 1, 1, 1, IGNORE, IGNORE]
