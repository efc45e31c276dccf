"""The search server goes away while the pipeline's retrieve stage runs, and comes back."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs._door import run as run_door
from jobs.pipeline import main as pipeline_job
from rac.data import load_data
from rac.pipeline import MANIFEST, PipelineConfig
from rac.testing.es_server import free_port, start_server, stop_server, wait_http
from tests.e2e.procs import kill_group, start_job, wait_until

pytestmark = pytest.mark.slow  # a search server stopped and restarted mid-stage: CI, not `make test`

#: 306 queries: the stage is still searching when the server stops (in the runs so far, it stopped
#: after 3 batches of 5); each failed batch then costs a retry.
ROWS_PER_QUERY = 3
BAD_INPUT = {"bad-empty": ("", "empty query"), "bad-no-word": ("?!", "query has no searchable words")}


@pytest.fixture
def own_server():
    """A server of this test alone (it is stopped and started again): (port, data dir, process box)."""
    data_dir = Path(tempfile.mkdtemp(prefix="rac-es-outage-"))
    port = free_port()
    box = [start_server(port, data_dir, data_dir / "server.log")]
    wait_http(f"http://127.0.0.1:{port}", 30, box[0])
    yield port, data_dir, box
    stop_server(box[0])
    shutil.rmtree(data_dir, ignore_errors=True)


def _inputs(root: Path) -> tuple[Path, Path, set[str]]:
    demo = load_data("demo")
    rows = [{"id": f"{r['id']}-{k}", "query": f"{r['query']} {w}", "question": r["question"]}
            for k, w in enumerate(["facts", "history", "price", "near me", "for kids", "review", "how", "when",
                                   "where", "best", "cheap", "map", "news", "list", "guide"][:ROWS_PER_QUERY])
            for r in demo.records]
    rows += [{"id": i, "query": q} for i, (q, _) in BAD_INPUT.items()]
    data = root / "queries.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"p{i}", "text": d["text"]}) + "\n"
                              for i, d in enumerate(demo.documents)))
    return data, corpus, {r["id"] for r in rows}


def test_server_stopped_during_retrieve_then_restarted(ray_local, tmp_path, own_server, monkeypatch):
    port, data_dir, box = own_server
    url = f"http://127.0.0.1:{port}"
    data, corpus, ids = _inputs(tmp_path)
    run = tmp_path / "run"
    args = ["--config", "configs/demo.yaml", "--run_dir", str(run), "--stages", "[index, retrieve]",
            "--data.format", "jsonl", "--data.path", str(data), "--data.corpus_path", str(corpus),
            "--retriever.elasticsearch.url", url, "--retriever.elasticsearch.index_name", "outage",
            "--retriever.elasticsearch.max_retries", "1", "--retriever.elasticsearch.retry_backoff", "0.05",
            "--retrieve_pool.batch_size", "5", "--retrieve_pool.max_size", "1"]
    parts = run / "retrieve" / "retrieved"

    proc = start_job("jobs.pipeline", args, tmp_path / "first.log")
    try:
        assert wait_until(lambda: any(parts.glob("part-*.parquet")), proc, timeout=300), \
            (tmp_path / "first.log").read_text()[-3000:]
        stop_server(box[0])  # the server goes away mid-stage
        assert proc.wait(timeout=300) == 1
    finally:
        kill_group(proc)
    log = (tmp_path / "first.log").read_text()
    assert "Traceback" not in log
    found = re.search(r"error: stage retrieve is incomplete: (\d+) of (\d+) rows failed \(first: retrieval failed: "
                      rf"msearch on Elasticsearch at {url} failed after 2 attempts: .*Check that the server is up.*"
                      rf"They are listed in {run}/retrieve/errors\.jsonl", log)
    assert found, log[-3000:]
    failed, total = int(found.group(1)), int(found.group(2))
    print(f"outage: {failed} of {total} rows failed while the server was down")
    assert total == len(ids) and 0 < failed < total
    assert (run / "index" / MANIFEST).is_file() and not (run / "retrieve" / MANIFEST).exists()

    box[0] = start_server(port, data_dir, data_dir / "server.log")  # the server is back, with its index
    wait_http(url, 30, box[0])
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # configs/demo.yaml, as the job's cwd
    # The same command again (through the door in this process, on the session's Ray: faster).
    assert run_door(PipelineConfig, lambda cfg: pipeline_job(cfg, None), argv=args) == 0
    result = json.loads((run / "retrieve" / MANIFEST).read_text())["result"]
    summary = result["details"]
    assert (summary["retried"], summary["searched"], summary["skipped"]) == (failed, failed, total - failed)
    assert result["failed_rows"] == 0 and summary["error_rows"] == len(BAD_INPUT)
    table = pq.read_table(parts, columns=["id", "passages", "error"])
    written = table.column("id").to_pylist()
    assert len(written) == len(set(written)) == len(ids) and set(written) == ids  # none twice, none missing
    errors = {r["id"]: r["error"] for r in table.to_pylist() if r["error"]}
    assert errors == {i: e for i, (_, e) in BAD_INPUT.items()}  # bad input stays an error row, not a failure
