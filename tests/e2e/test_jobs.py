"""The jobs as a user runs them: ``python -m jobs.<stage>`` in a fresh process."""

import json
import os
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from tests.e2e.conftest import ALL_STAGES, demo_args

pytestmark = pytest.mark.slow  # job processes, each with a Ray of its own: CI's whole suite, not the quick `make test`


def run_job(module, *args, timeout=300):
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(REPO)}  # a Ray of its own
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


#: An error line of Ray's C++ core: ``[2026-12-07 12:31:33,946 E 31128 31128] core_worker.cc:...``.
RAY_ERROR_LINE = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,.]+ E \d+ \d+\]")
#: E lines Ray itself prints on healthy runs, none about our work: its own actors (Ray Data's map
#: workers, Ray Train's preemption watcher) take refs as constructor arguments
#: (ray-project/ray#57733, open); at shutdown the GCS logs a kill of an actor whose worker has
#: already exited (Ray 2.60's gcs_actor_scheduler.cc; the twin log in gcs_actor_manager.cc was
#: demoted as a non-error in ray-project/ray#58544).
KNOWN_RAY_ERRORS = ("has constructor arguments in the object store and max_restarts > 0",
                    "gcs_actor_scheduler.cc:538: Failed to kill actor")


def test_main_job_runs_every_stage_and_skips_them_on_rerun(demo_run):
    # The demo pipeline through the door a user runs (tests/e2e/conftest.py: tiny models, two
    # optimizer steps per training stage). (The full demo on SmolLM2 is `make run`; its timing is in the README.)
    proc, run = demo_run.proc, demo_run.run_dir
    # A quiet log: no bytecode (datasets hashing a TRL function with dill prints it under Ray's
    # stdout capture), no error line of Ray's beyond its own known one.
    log = proc.stdout + proc.stderr
    assert "Disassembly of" not in log and not re.search(r"\s\d+ (LOAD_FAST|RETURN_VALUE)\b", log), log[-3000:]
    assert [line for line in log.splitlines()
            if RAY_ERROR_LINE.search(line) and not any(known in line for known in KNOWN_RAY_ERRORS)] == []
    assert proc.stdout.count("ran in") == len(ALL_STAGES)
    assert "example clarifying questions:" in proc.stdout and "metrics (test split):" in proc.stdout
    for system in ("grounded-sft", "ungrounded-sft", "rac"):
        assert f"  {system}: " in proc.stdout  # a question of each system beside the passages
        assert any(line.startswith(f"  {system} ") for line in proc.stdout.splitlines())  # its metrics row

    # Every row accounted for, stage to stage.
    manifests = {s: json.loads((run / s / "manifest.json").read_text()) for s in ALL_STAGES}
    results = {s: m["result"] for s, m in manifests.items()}
    splits = pq.read_table(run / "retrieve" / "retrieved", columns=["split"]).column("split").to_pylist()
    assert results["retrieve"]["rows_in"] == results["retrieve"]["rows_out"] == len(splits) == 102
    negatives = pq.read_table(run / "negatives" / "negatives")
    assert sorted(set(negatives.column("split").to_pylist())) == ["t2"]
    assert negatives.num_rows == splits.count("t2") == results["negatives"]["rows_in"]
    with_error = negatives.num_rows - negatives.column("error").null_count
    assert negatives.column("rejected").null_count == with_error == negatives.num_rows - \
        results["negatives"]["rows_out"]
    for stage in ("sft_grounded", "sft_ungrounded", "train_rac"):
        assert (run / stage / "model" / "config.json").is_file()
    report = json.loads((run / "evaluate" / "report.json").read_text())
    assert set(report["systems"]) == {"grounded-sft", "ungrounded-sft", "rac"}
    assert all(s["evaluated"] + s["error_rows"] == splits.count("test") for s in report["systems"].values())
    for stage in ALL_STAGES:
        assert manifests[stage]["git_revision"] and "ray" in manifests[stage]["versions"]

    again = run_job("jobs.pipeline", *demo_args(run, demo_run.base_model), timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("unchanged, skipped") == len(ALL_STAGES)


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
    assert "102 of 102 queries retrieved, 0 matched no passage, 0 error rows" in retrieve.stdout


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
