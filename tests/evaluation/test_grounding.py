"""PARENT-style grounding (rac.evaluation.grounding) on examples computed by hand."""

from __future__ import annotations

import math

import pytest

from rac.evaluation.grounding import content_tokens, parent_grounding

PASSAGES = ["Jaguar is a British car brand.", "The jaguar is a wild cat."]


def test_two_passage_example_by_hand():
    # Content tokens of the question: british car maker jaguar ("are you looking for the" dropped).
    # Table tokens: {jaguar, british, car, brand} | {jaguar, wild, cat}; "maker" is not in it.
    # w per token: british 1, car 1, maker 0, jaguar 1.
    p1 = 3 / 4
    p2 = (1 + 0.5 + 0.5) / 3            # (british car) (car maker) (maker jaguar)
    p3 = (2 / 3 + 2 / 3) / 2            # (british car maker) (car maker jaguar)
    p4 = 3 / 4                          # (british car maker jaguar)
    precision = (p1 * p2 * p3 * p4) ** (1 / 4)
    recall = (3 / 4 + 1 / 3) / 2        # passage 1: 3 of its 4 content words; passage 2: 1 of 3
    f1 = 2 * precision * recall / (precision + recall)

    got = parent_grounding("Are you looking for the British car maker Jaguar?", PASSAGES)

    assert content_tokens("Are you looking for the British car maker Jaguar?") == ["british", "car", "maker",
                                                                                   "jaguar"]
    assert got["precision"] == pytest.approx(precision) == pytest.approx(math.sqrt(0.5))
    assert got["recall"] == pytest.approx(recall)
    assert got["f1"] == pytest.approx(f1)


def test_ungrounded_question_scores_below_grounded_one():
    grounded = parent_grounding("Do you mean the wild cat jaguar?", PASSAGES)
    ungrounded = parent_grounding("Do you mean the football team from Florida?", PASSAGES)
    assert grounded["precision"] == 1.0  # every content word (wild, cat, jaguar) is in the passages
    assert ungrounded == {"precision": 0.0, "recall": 0.0, "f1": 0.0}  # none is
    assert grounded["f1"] > ungrounded["f1"]


@pytest.mark.parametrize("prediction, passages", [
    ("", PASSAGES),
    ("   ", PASSAGES),
    ("Are you looking for it?", PASSAGES),  # scaffolding and function words only: no content
    ("Which jaguar?", []),
    ("Which jaguar?", ["", "the of and"]),  # passages without a content word are no facts
])
def test_empty_question_or_passages_give_zeros(prediction, passages):
    assert parent_grounding(prediction, passages) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_non_ascii_text():
    passages = ["Zürich is a city.", "Köln lies on the Rhine."]
    got = parent_grounding("ZÜRICH or Ko\u0308ln?", passages)  # upper case and a decomposed umlaut
    assert got["precision"] == pytest.approx(1.0)  # zürich and köln are both in the table
    assert got["recall"] == pytest.approx((1 / 2 + 1 / 3) / 2)  # {zürich, city}, {köln, lies, rhine}
    cjk = parent_grounding("東京 or 大阪?", ["東京 is the capital."])
    assert cjk["precision"] == pytest.approx(math.sqrt(0.5 * 0.5))  # P1 = 1/2, P2 = 1/2
    assert cjk["recall"] == pytest.approx(1 / 2)


def test_scores_are_bounded():
    for prediction in ["jaguar jaguar jaguar jaguar jaguar", "car brand wild cat british", "x y z?"]:
        got = parent_grounding(prediction, PASSAGES)
        assert set(got) == {"precision", "recall", "f1"}
        assert all(0.0 <= v <= 1.0 for v in got.values())
