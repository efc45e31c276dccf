"""A stage submitted with ``ray job submit`` to a cluster started by ``ray start --head``
(own ports, own temp dir, token authentication on as Ray 2.60 defaults). Only the cluster
started here is stopped, through its own process group."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rac.testing.es_server import free_port, wait_http
from tests.conftest import REPO

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="rac-ray-")
    token = secrets.token_hex(16)
    # The job's `python` must be this environment's, as on a cluster whose image has the project.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--temp-dir={temp_dir}", "--num-cpus=2", f"--ray-client-server-port={free_port()}",
         f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
         "--object-store-memory=200000000"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_http(url + "/api/version", timeout=90, proc=proc)
        yield url, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # `ray start --block` often outwaits SIGTERM; the group is all ours
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(url, env, *args, timeout=300):
    return subprocess.run([str(BIN / "ray"), "job", "submit", f"--address={url}", "--runtime-env",
                           "cluster/runtime_env.yaml", "--", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_stage_runs_as_a_ray_job_with_token_auth(ray_head, tmp_path):
    url, env = ray_head
    out = tmp_path / "index"
    proc = submit(url, env, "python", "-m", "jobs.index", "--config", "configs/index.yaml",
                  "--output_dir", str(out), "--retriever.index_dir", str(out / "bm25"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    assert "indexed 138 of 138 passages (embedded)" in proc.stdout
    summary = json.loads((out / "run_info.json").read_text())["summary"]
    assert summary["indexed"] == summary["passages"] == 138

    retrieve = submit(url, env, "python", "-m", "jobs.retrieve", "--config", "configs/retrieve.yaml",
                      "--output_dir", str(tmp_path / "retrieve"), "--retriever.index_dir", str(out / "bm25"))
    assert retrieve.returncode == 0, retrieve.stdout[-2000:] + retrieve.stderr[-2000:]
    assert pq.read_table(tmp_path / "retrieve" / "retrieved").num_rows == 102


def test_without_the_token_the_cluster_refuses(ray_head):
    url, env = ray_head
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    no_token["HOME"] = tempfile.mkdtemp()  # no ~/.ray/auth_token to fall back on
    start = time.monotonic()
    proc = subprocess.run([str(BIN / "ray"), "job", "list", f"--address={url}"], env=no_token,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < 120
