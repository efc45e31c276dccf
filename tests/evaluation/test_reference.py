"""Reference metrics: ROUGE-L and METEOR by hand, BLEU equal to sacrebleu's own."""

from __future__ import annotations

import pytest
import sacrebleu

from rac.evaluation import reference
from rac.evaluation.reference import (
    NOT_AVAILABLE_OFFLINE,
    corpus_bleu,
    lcs_length,
    meteor,
    meteor_exact,
    reference_scores,
    rouge_l,
    sentence_bleu,
)

PREDICTIONS = ["are you looking for the jaguar car?", "do you mean the wild cat?", "which team do you mean?"]
REFERENCES = ["are you interested in jaguar cars?", "are you asking about the wild cat jaguar?",
              "do you mean the football team?"]


def test_rouge_l_by_hand():
    # hyp: do you mean the wild cat (6) ; ref: are you asking about the wild cat jaguar (8)
    # LCS = you the wild cat = 4 -> P = 4/6, R = 4/8, F1 = 2PR/(P+R) = 4/7
    got = rouge_l("Do you mean the wild cat?", "Are you asking about the wild cat jaguar?")
    assert lcs_length("a b c d".split(), "b d a c".split()) == 2
    assert got["precision"] == pytest.approx(4 / 6)
    assert got["recall"] == pytest.approx(4 / 8)
    assert got["f1"] == pytest.approx(4 / 7)


def test_rouge_l_agrees_with_rouge_score_on_ascii():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for hyp, ref in zip(PREDICTIONS, REFERENCES, strict=True):
        assert rouge_l(hyp, ref)["f1"] == pytest.approx(scorer.score(ref, hyp)["rougeL"].fmeasure)


def test_rouge_l_empty_and_non_ascii():
    assert rouge_l("", "which jaguar?") == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert rouge_l("which jaguar?", "") == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    # rouge-score's tokenizer would drop these words; ours keeps them (3 of 3 and 3 of 4 in order).
    got = rouge_l("Meinen Sie Zürich?", "Meinen Sie wirklich Zürich?")
    assert got["precision"] == pytest.approx(1.0) and got["recall"] == pytest.approx(3 / 4)


def test_bleu_equals_sacrebleu():
    assert corpus_bleu(PREDICTIONS, REFERENCES)["score"] == pytest.approx(
        sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    for hyp, ref in zip(PREDICTIONS, REFERENCES, strict=True):
        assert sentence_bleu(hyp, ref) == pytest.approx(sacrebleu.sentence_bleu(hyp, [ref]).score)
    assert corpus_bleu(REFERENCES, REFERENCES)["score"] == pytest.approx(100.0)
    assert "nrefs:1" in corpus_bleu(PREDICTIONS, REFERENCES)["signature"]


def test_meteor_exact_by_hand():
    # 3 exact matches (a b . d) of 4 words each side: P = R = 3/4 so Fmean = 3/4; two chunks
    # ("a b", "d") over 3 matches: penalty = 0.5 * (2/3)^3.
    expected = (1 - 0.5 * (2 / 3) ** 3) * 0.75
    assert meteor_exact("a b c d", "a b x d") == pytest.approx(expected)
    assert meteor_exact("the jaguar cats", "the jaguar cat") < meteor_exact("the jaguar cat", "the jaguar cat")
    assert meteor_exact("cats", "cat") == 0.0  # no stemming: exact matches only
    assert meteor_exact("", "a b") == 0.0


def test_full_meteor_is_not_a_number_without_wordnet(monkeypatch):
    monkeypatch.setattr(reference, "wordnet_available", lambda: False)
    assert meteor("the jaguar car", "the jaguar car") == NOT_AVAILABLE_OFFLINE
    scores = reference_scores("the jaguar car?", "the jaguar car?")
    assert scores["meteor"] == NOT_AVAILABLE_OFFLINE
    assert scores["meteor_exact"] == pytest.approx(1 - 0.5 * (1 / 3) ** 3)  # 3 matches in one chunk
    assert reference_scores("x", None) == {"bleu": None, "rouge_l": None, "meteor": None, "meteor_exact": None}


def test_wordnet_is_looked_up_locally_never_downloaded(monkeypatch):
    import nltk

    monkeypatch.setattr(nltk, "download", lambda *a, **k: pytest.fail("nltk.download must never be called"))
    reference.wordnet_available.cache_clear()
    try:
        assert isinstance(reference.wordnet_available(), bool)
    finally:
        reference.wordnet_available.cache_clear()
