"""The jobs as a user runs them: ``python -m jobs.<stage>`` in a fresh process."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq

from tests.conftest import REPO


def run_job(module, *args, timeout=300):
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(REPO)}  # a Ray of its own
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_main_job_runs_on_embedded_defaults(tmp_path):
    # The retrieval half of the demo pipeline (the model stages are tested on tiny models in
    # tests/training, tests/decoding and tests/evaluation; the whole demo takes ~20 minutes).
    proc = run_job("jobs.pipeline", "--config", "configs/demo.yaml", "--run_dir", str(tmp_path), "--show", "2",
                   "--stages", "[index, retrieve]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "queries and the passages retrieved for them" in proc.stdout
    assert "gold question:" in proc.stdout
    again = run_job("jobs.pipeline", "--config", "configs/demo.yaml", "--run_dir", str(tmp_path), "--show", "0",
                    "--stages", "[index, retrieve]")
    assert again.returncode == 0 and again.stdout.count("unchanged, skipped") == 2
    table = pq.read_table(tmp_path / "retrieve" / "retrieved")
    assert table.num_rows == 102 and table.column("error").null_count == 102
    assert set(table.column("split").to_pylist()) == {"t1", "t2", "test"}
    for stage in ("index", "retrieve"):
        info = json.loads((tmp_path / stage / "run_info.json").read_text())
        assert info["stage"] == stage and "ray" in info["versions"] and info["git_revision"]
        assert (tmp_path / stage / "config.yaml").is_file()


def test_index_and_retrieve_jobs_on_elasticsearch(tmp_path, es_config):
    es = ["--retriever.elasticsearch.url", es_config.url,
          "--retriever.elasticsearch.index_name", es_config.index_name]
    missing = run_job("jobs.retrieve", "--config", "configs/retrieve.yaml", "--output_dir", str(tmp_path / "r"), *es)
    assert missing.returncode == 1
    assert f"index '{es_config.index_name}' does not exist" in missing.stderr and "Traceback" not in missing.stderr

    index = run_job("jobs.index", "--config", "configs/index.yaml", "--output_dir", str(tmp_path / "i"), *es)
    assert index.returncode == 0, index.stderr[-3000:]
    assert "indexed 138 of 138 passages (elasticsearch)" in index.stdout
    retrieve = run_job("jobs.retrieve", "--config", "configs/retrieve.yaml", "--output_dir", str(tmp_path / "r"), *es)
    assert retrieve.returncode == 0, retrieve.stderr[-3000:]
    assert "102 of 102 queries retrieved, 0 error rows" in retrieve.stdout


def test_bad_config_exits_2_with_the_key_named():
    proc = run_job("jobs.retrieve", "--retriever.b", "1.5")
    assert proc.returncode == 2
    assert "config error: retriever.b must be in [0, 1], got 1.5" in proc.stderr


def test_malformed_data_exits_1_naming_file_and_line(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": "a", "query": "x"}\n{"id": "b"}\n')
    proc = run_job("jobs.index", "--data.format", "jsonl", "--data.path", str(bad),
                   "--data.corpus_path", str(bad), "--output_dir", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert f"{bad}: line 2: field 'query' is missing" in proc.stderr
