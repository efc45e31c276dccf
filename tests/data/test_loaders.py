import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rac.data import DataFormatError, load_data, make_record, records_to_table
from rac.data.loaders import CLARIQ_COLUMNS, load_clariq, load_jsonl, load_parquet, load_qulac


def test_qulac_keeps_every_row_as_record_or_dropped(qulac_path):
    data = load_qulac(qulac_path)
    assert data.rows_in == 11039  # every row of the file is accounted for
    assert len({r["id"] for r in data.records}) == len(data.records)
    assert len({r["topic_id"] for r in data.records}) == 198
    assert all(r["query"] and r["question"] for r in data.records)
    reasons = [d["reason"] for d in data.dropped]
    assert reasons.count("no clarifying question") == 762  # Qulac's empty-question row of each facet
    assert all(r.startswith("duplicate of qulac-") for r in reasons if r != "no clarifying question")
    assert len(data.records) == 2639
    # Escaped quotes of the dump are undone: "Obama\'s" reads "Obama's".
    assert not any("\\'" in d["text"] for d in data.documents)
    assert {d["source"] for d in data.documents} == {"topic_desc", "facet_desc"}
    without_dedupe = load_qulac(qulac_path, dedupe=False)
    assert len(without_dedupe.records) == 11039 - 762


def _qulac_file(tmp_path, columns):
    path = tmp_path / "qulac.json"
    path.write_text(json.dumps(columns))
    return path


def test_qulac_malformed_names_file_row_and_field(tmp_path):
    row = {"topic_id": 1, "facet_id": 2, "topic": "jaguar", "topic_desc": "cats and cars",
           "facet_desc": "the car", "question": "the car?"}
    columns = {c: {"0": v, "1": v} for c, v in row.items()}
    del columns["question"]["1"]
    path = _qulac_file(tmp_path, columns)
    with pytest.raises(DataFormatError, match=r"qulac.json: row '1': field 'question' is missing"):
        load_qulac(path)
    del columns["topic_desc"]
    with pytest.raises(DataFormatError, match=r"column 'topic_desc'.*missing"):
        load_qulac(_qulac_file(tmp_path, columns))


def _clariq_tsv(tmp_path, rows):
    path = tmp_path / "train.tsv"
    path.write_text("\t".join(CLARIQ_COLUMNS) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


def test_clariq_rows_become_records_or_are_set_aside(tmp_path):
    path = _clariq_tsv(tmp_path, [
        ["1", "dinosaur", "Find facts about dinosaurs", "2", "F1", "Fossils in museums", "Q1",
         "are you interested in fossils?", "yes"],
        ["1", "dinosaur", "Find facts about dinosaurs", "2", "F2", "Toy dinosaurs", "Q2",
         "do you want dinosaur toys?", "no"],
        ["2", "obama height", "How tall is Obama", "1", "F3", "Obama's height", "nan", "nan", "nan"],
    ])
    data = load_clariq(path)
    assert [r["id"] for r in data.records] == ["clariq-1-Q1", "clariq-1-Q2"]
    assert data.records[0]["query"] == "dinosaur" and data.records[0]["facet_id"] == "F1"
    assert data.dropped == [{"row": "line 4", "id": "clariq-2-line4", "reason": "no clarifying question"}]
    assert data.rows_in == 3
    assert {d["text"] for d in data.documents} >= {"Fossils in museums", "Find facts about dinosaurs"}


def test_clariq_malformed_names_line(tmp_path):
    bad = _clariq_tsv(tmp_path, [["1", "dinosaur", "desc", "2", "F1", "fd", "Q1", "q?", "a", "extra"]])
    with pytest.raises(DataFormatError, match=r"train.tsv: line 2: 10 fields, header has 9"):
        load_clariq(bad)
    header = tmp_path / "h.tsv"
    header.write_text("topic_id\tinitial_request\n")
    with pytest.raises(DataFormatError, match=r"line 1: header lacks column\(s\) topic_desc"):
        load_clariq(header)


def test_jsonl_round_trip_and_errors(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a", "query": "jaguar", "question": "the cat?", "topic_id": 3}\n\n'
                    '{"id": "b", "query": "mercury"}\n')
    data = load_jsonl(path)
    assert [r["id"] for r in data.records] == ["a", "b"]
    assert data.records[0]["topic_id"] == "3" and data.records[1]["question"] is None

    path.write_text('{"id": "a", "query": "x"}\n{"id": "b", "query": "y"\n')
    with pytest.raises(DataFormatError, match=r"r.jsonl: line 2: not valid JSON"):
        load_jsonl(path)
    path.write_text('{"id": "a", "query": "x"}\n{"id": "b", "question": "y?"}\n')
    with pytest.raises(DataFormatError, match=r"line 2: field 'query' is missing"):
        load_jsonl(path)
    path.write_text('{"id": "a", "query": 5}\n')
    with pytest.raises(DataFormatError, match=r"line 1: field 'query' must be a string, got int"):
        load_jsonl(path)
    path.write_text('{"id": "a", "query": "x"}\n{"id": "a", "query": "y"}\n')
    with pytest.raises(DataFormatError, match=r"line 2: field 'id': 'a' repeats line 1"):
        load_jsonl(path)


def test_parquet_round_trip_and_missing_column(tmp_path):
    recs = [make_record("a", "jaguar", "the cat?", "t1", passages=[{"id": "p1", "text": "cats", "score": 1.5}]),
            make_record("b", "mercury")]
    pq.write_table(records_to_table(recs), tmp_path / "r.parquet")
    assert load_parquet(tmp_path / "r.parquet").records == recs
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataFormatError, match=r"bad.parquet: column 'query': missing"):
        load_parquet(tmp_path / "bad.parquet")


def test_demo_set_is_complete():
    data = load_data("demo")
    assert len(data.records) >= 72 and not data.dropped
    assert len({r["topic_id"] for r in data.records}) >= 30
    assert all(r["question"].endswith("?") for r in data.records)
    assert len(data.documents) == len(data.records) + len({r["topic_id"] for r in data.records})
