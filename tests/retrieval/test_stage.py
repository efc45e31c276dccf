"""The retrieval and indexing stages on real local Ray Data."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rac.config import ActorPoolConfig, ConfigError
from rac.data import load_data
from rac.data.config import DataConfig
from rac.parts import FAULT_KILL_AFTER_PARTS
from rac.retrieval import (
    ElasticsearchConfig,
    IndexConfig,
    IndexMissingError,
    RetrieveConfig,
    RetrieverConfig,
    ServerUnavailableError,
    read_retrieved,
    retrieve_dataset,
    run_index,
    run_retrieve,
)
from rac.retrieval.stage import SERVER_FAILURE
from tests.conftest import REPO

POOL = ActorPoolConfig(min_size=1, max_size=2, batch_size=8)

BAD_QUERIES = {"empty": "", "blank": "   ", "long": "jaguar " * 300, "symbols": "?!?"}


@pytest.fixture
def queries_file(tmp_path):
    """Demo records plus one row of each kind of bad query."""
    records = load_data("demo").records[:30]
    rows = [{k: r[k] for k in ("id", "query", "question", "topic_id")} for r in records]
    rows += [{"id": f"bad-{name}", "query": q, "topic_id": "bad"} for name, q in BAD_QUERIES.items()]
    rows.append({"id": "no-match", "query": "xylophonist quokka", "topic_id": "none"})  # no word in the corpus
    path = tmp_path / "queries.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def _index_then_retrieve(tmp_path, queries_path, retriever):
    data = DataConfig(format="jsonl", path=str(queries_path),
                      corpus_path=None)
    demo = DataConfig(format="demo")
    index_summary = run_index(IndexConfig(data=demo, retriever=retriever, pool=POOL,
                                          output_dir=str(tmp_path / "index")))
    summary = run_retrieve(RetrieveConfig(data=data, retriever=retriever, pool=POOL,
                                          output_dir=str(tmp_path / "retrieve")))
    return index_summary, summary, read_retrieved(tmp_path / "retrieve").to_pylist()


def _check_conservation(summary, out, rows, tmp_path):
    assert summary.details["records"] == len(rows) == len(out)
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)  # each id once
    by_id = {r["id"]: r for r in out}
    for name in BAD_QUERIES:
        assert by_id[f"bad-{name}"]["error"] and by_id[f"bad-{name}"]["passages"] is None
    assert "more than retriever.max_query_chars=1000" in by_id["bad-long"]["error"]
    assert by_id["bad-empty"]["error"] == "empty query"
    assert by_id["no-match"]["passages"] == [] and by_id["no-match"]["error"] is None  # nothing found is no error
    good = [r for r in out if not r["id"].startswith("bad-") and r["id"] != "no-match"]
    assert all(r["error"] is None and 1 <= len(r["passages"]) <= 5 for r in good)  # only passages sharing a word
    assert any(len(r["passages"]) == 5 for r in good)
    assert summary.details["without_passages"] == 1
    d = summary.details
    assert d["with_passages"] + d["without_passages"] + d["error_rows"] == d["records"] == summary.rows_out
    errors = (tmp_path / "retrieve" / "errors.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in errors) == sorted(f"bad-{n}" for n in BAD_QUERIES)
    return by_id


def test_embedded_stage_keeps_every_row(ray_local, tmp_path, queries_file):
    path, rows = queries_file
    retriever = RetrieverConfig(top_k=5, index_dir=str(tmp_path / "bm25"))
    index_summary, summary, out = _index_then_retrieve(tmp_path, path, retriever)
    assert index_summary.rows_out == index_summary.rows_in >= 100
    by_id = _check_conservation(summary, out, rows, tmp_path)
    # The gold facet's own passage is what BM25 finds for a query about it.
    jaguar = by_id["demo-01-f1"]["passages"]
    assert any("Panthera onca" in p["text"] for p in jaguar)
    assert [p["score"] for p in jaguar] == sorted((p["score"] for p in jaguar), reverse=True)


@pytest.mark.slow
def test_elasticsearch_stage_matches_embedded(ray_local, tmp_path, queries_file, es_config):
    path, rows = queries_file
    retriever = RetrieverConfig(top_k=5, elasticsearch=es_config)
    index_summary, summary, out = _index_then_retrieve(tmp_path, path, retriever)
    assert index_summary.details["backend"] == "elasticsearch"
    assert index_summary.rows_out == index_summary.rows_in and index_summary.failed_rows == 0
    by_id = _check_conservation(summary, out, rows, tmp_path)

    # Same ranking as the embedded backend; scores differ only by Lucene's rounding of
    # lengths above 24 tokens (the embedded backend uses exact lengths).
    embedded = RetrieverConfig(top_k=5, index_dir=str(tmp_path / "bm25"))
    _, _, emb_out = _index_then_retrieve(tmp_path / "emb", path, embedded)
    good = [r for r in emb_out if r["passages"]]
    same_top = sum(r["passages"][0]["id"] == by_id[r["id"]]["passages"][0]["id"] for r in good)
    assert same_top >= 0.9 * len(good)
    for row in good:
        assert row["passages"][0]["score"] == pytest.approx(by_id[row["id"]]["passages"][0]["score"], rel=0.05)


def test_server_lost_mid_run_is_recorded_on_every_row(ray_local, dead_url):
    retriever = RetrieverConfig(elasticsearch=ElasticsearchConfig(url=dead_url, max_retries=1, retry_backoff=0.05))
    table = pa.table({"id": [str(i) for i in range(20)], "query": ["jaguar"] * 19 + [""]})
    out = retrieve_dataset(ray_local.data.from_arrow(table), retriever, POOL).take_all()
    assert sorted(r["id"] for r in out) == sorted(table.column("id").to_pylist())
    errors = {r["id"]: r["error"] for r in out}
    assert errors.pop("19") == "empty query"
    assert all(e.startswith(SERVER_FAILURE) and dead_url in e for e in errors.values())


def test_retrieve_fails_fast_without_index_or_server(tmp_path, dead_url):
    # No Ray needed: the driver checks before any actor starts.
    cfg = RetrieveConfig(retriever=RetrieverConfig(index_dir=str(tmp_path / "none")), output_dir=str(tmp_path))
    with pytest.raises(IndexMissingError, match="run `python -m jobs.index` first"):
        run_retrieve(cfg)
    es = ElasticsearchConfig(url=dead_url, max_retries=1, retry_backoff=0.05)
    with pytest.raises(ServerUnavailableError, match=dead_url):
        run_retrieve(RetrieveConfig(retriever=RetrieverConfig(elasticsearch=es), output_dir=str(tmp_path)))


def _retrieve_cfg(tmp_path, **overrides):
    fields = {"data": DataConfig(format="demo"),
              "retriever": RetrieverConfig(top_k=3, index_dir=str(tmp_path / "bm25")),
              "pool": ActorPoolConfig(min_size=1, max_size=1, batch_size=8), "output_dir": str(tmp_path / "retrieve"),
              "show": 0}
    return RetrieveConfig(**{**fields, **overrides})


def _parts(tmp_path):
    return sorted((tmp_path / "retrieve" / "retrieved").glob("part-*.parquet"))


@pytest.mark.slow
def test_killed_retrieve_resumes_without_redoing_or_losing_rows(ray_local, tmp_path):
    cfg = _retrieve_cfg(tmp_path)
    run_index(IndexConfig(data=cfg.data, retriever=cfg.retriever, output_dir=str(tmp_path / "index")))
    ids = sorted(r["id"] for r in load_data("demo").records)
    argv = [sys.executable, "-m", "jobs.retrieve", "--output_dir", cfg.output_dir, "--retriever.index_dir",
            cfg.retriever.index_dir, "--retriever.top_k", "3", "--pool.max_size", "1", "--pool.batch_size", "8",
            "--show", "0"]

    # The job is SIGKILLed right after its second part, as a preempted node would be.
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, FAULT_KILL_AFTER_PARTS: "2"}
    killed = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    first = {p.name: pq.read_table(p) for p in _parts(tmp_path)}
    assert len(first) == 2 and sum(t.num_rows for t in first.values()) == 16
    assert not (tmp_path / "retrieve" / "run_info.json").exists()
    (tmp_path / "retrieve" / "retrieved" / ".part-x-00002.parquet.0a1b2c3d.tmp").write_bytes(b"PAR1 half")

    summary = run_retrieve(cfg)
    assert (summary.details["skipped"], summary.details["searched"], summary.details["records"]) == \
        (16, len(ids) - 16, len(ids))
    out = read_retrieved(cfg.output_dir)
    assert out.column("id").to_pylist() == ids  # every id, once
    for name, table in first.items():  # the parts of the killed run are kept as they were
        assert pq.read_table(tmp_path / "retrieve" / "retrieved" / name).equals(table)
    assert not list((tmp_path / "retrieve" / "retrieved").glob("*.tmp"))
    # The same rows as an uninterrupted run.
    fresh = run_retrieve(_retrieve_cfg(tmp_path, output_dir=str(tmp_path / "fresh")))
    assert fresh.details["searched"] == len(ids)
    assert read_retrieved(tmp_path / "fresh").select(["id", "passages", "error"]).equals(
        out.select(["id", "passages", "error"]))


def test_rerun_searches_again_server_failures_and_refuses_other_settings(ray_local, tmp_path):
    cfg = _retrieve_cfg(tmp_path)
    run_index(IndexConfig(data=cfg.data, retriever=cfg.retriever, output_dir=str(tmp_path / "index")))
    n = run_retrieve(cfg).details["records"]
    part = _parts(tmp_path)[0]
    rows = pq.read_table(part).to_pylist()
    failed = [r["id"] for r in rows[:3]]
    for r in rows[:3]:  # as RetrieveBatch records a batch the server did not answer
        r.update(passages=None, error=f"{SERVER_FAILURE}ConnectionError: simulated")
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(part)), part)

    again = run_retrieve(cfg)
    d = again.details
    assert (d["retried"], d["searched"], d["skipped"], d["server_failures"]) == (3, 3, n - 3, 0)
    by_id = {r["id"]: r for r in read_retrieved(cfg.output_dir).to_pylist()}
    assert len(by_id) == n and all(by_id[i]["passages"] and by_id[i]["error"] is None for i in failed)

    # Rows searched with other settings are never mixed with new ones ...
    other = _retrieve_cfg(tmp_path, retriever=RetrieverConfig(top_k=2, index_dir=cfg.retriever.index_dir))
    with pytest.raises(ConfigError, match="top_k: 3 there, 2 now.*--resume false"):
        run_retrieve(other)
    # ... unless asked to start over.
    over = run_retrieve(dataclasses.replace(other, resume=False))
    assert (over.details["searched"], over.details["skipped"]) == (n, 0)
    assert all(len(r["passages"]) <= 2 for r in read_retrieved(cfg.output_dir).to_pylist() if r["passages"])
