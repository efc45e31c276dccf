import json
from collections import defaultdict

import pytest

from rac.data import assign_splits, build_corpus, load_data, make_record, passage_id
from rac.data.loaders import clean_text, load_qulac


def _topics_by_split(records):
    out = defaultdict(set)
    for r in records:
        out[r["split"]].add(r["topic_id"])
    return out


def test_splits_never_share_a_topic_and_follow_the_seed(qulac_path):
    records = load_qulac(qulac_path).records
    split = assign_splits(records, (0.45, 0.45, 0.1), seed=3)
    assert len(split) == len(records) and all(r["split"] in ("t1", "t2", "test") for r in split)
    by = _topics_by_split(split)
    assert not (by["t1"] & by["t2"]) and not (by["t1"] & by["test"]) and not (by["t2"] & by["test"])
    assert [len(by[s]) for s in ("t1", "t2", "test")] == [89, 89, 20]  # of 198 topics
    assert assign_splits(records, seed=3) == split
    assert _topics_by_split(assign_splits(records, seed=4))["test"] != by["test"]


def test_rows_without_topic_are_their_own_topic():
    records = [make_record(str(i), f"q{i}") for i in range(20)]
    split = assign_splits(records, (0.5, 0.3, 0.2), seed=0)
    assert [sum(r["split"] == s for r in split) for s in ("t1", "t2", "test")] == [10, 6, 4]


def test_bad_fractions_rejected():
    with pytest.raises(ValueError, match="summing to 1"):
        assign_splits([make_record("a", "q")], (0.5, 0.6, 0.1))


def test_corpus_dedupes_and_ids_are_stable():
    docs = [{"text": "The  Jaguar is a cat.", "source": "topic_desc"},
            {"text": "the jaguar is a cat.", "source": "facet_desc"},
            {"text": "Jaguar cars are British.", "source": "facet_desc"}]
    corpus = build_corpus(docs)
    assert [p["text"] for p in corpus] == ["The Jaguar is a cat.", "Jaguar cars are British."]
    assert corpus[0]["source"] == "topic_desc"
    assert [p["id"] for p in build_corpus(docs[::-1])][::-1] == [p["id"] for p in corpus]
    assert corpus[1]["id"] == passage_id("jaguar CARS are british.")


def test_qulac_and_demo_corpora(qulac_path):
    qulac = build_corpus(load_qulac(qulac_path).documents)
    columns = json.loads(qulac_path.read_text())
    distinct = {" ".join(clean_text(t).casefold().split())
                for col in ("topic_desc", "facet_desc") for t in columns[col].values()}
    assert len(qulac) == len(distinct) == 838  # of 198 topic + 762 facet descriptions
    assert len({p["id"] for p in qulac}) == len(qulac)
    demo = build_corpus(load_data("demo").documents)
    assert len({p["id"] for p in demo}) == len(demo) >= 100
