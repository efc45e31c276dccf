"""Stages submitted with ``ray job submit`` to the cluster of ``ray start`` nodes (conftest):
token authentication on as Ray 2.60 defaults, outputs on the storage root, never in Ray's copy
of the code."""

import json
import subprocess
import tempfile
import time

import pyarrow.parquet as pq
import pytest

from tests.cluster.conftest import BIN

pytestmark = pytest.mark.slow  # a cluster of `ray start` nodes and submitted jobs: CI, not `make test`


def test_stage_runs_as_a_ray_job_with_token_auth(ray_cluster, tmp_path):
    proc = ray_cluster.submit("python", "-m", "jobs.index", "--config", "configs/index.yaml",
                              "--storage", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    assert "indexed 138 of 138 passages (embedded)" in proc.stdout
    out = tmp_path / "outputs" / "index"  # configs/index.yaml's relative output_dir, under the storage root
    result = json.loads((out / "run_info.json").read_text())["result"]
    assert result["rows_out"] == result["rows_in"] == 138

    env_root = tmp_path / "by-env"  # the root named by RAC_STORAGE in the job's runtime env
    retrieve = ray_cluster.ray(
        "job", "submit", f"--address={ray_cluster.url}", "--runtime-env-json",
        json.dumps({"working_dir": ".", "excludes": [".git", ".venv", "outputs"],
                    "env_vars": {"RAC_STORAGE": str(env_root), "HF_HUB_OFFLINE": "1"}}),
        "--", "python", "-m", "jobs.retrieve", "--config", "configs/retrieve.yaml",
        "--retriever.index_dir", str(out / "bm25"), timeout=300)
    assert retrieve.returncode == 0, retrieve.stdout[-2000:] + retrieve.stderr[-2000:]
    assert pq.read_table(env_root / "outputs" / "retrieve" / "retrieved").num_rows == 102


def test_outputs_that_would_land_in_rays_copy_of_the_code_are_refused(ray_cluster):
    proc = ray_cluster.submit("python", "-m", "jobs.index", "--config", "configs/index.yaml", timeout=300)
    assert proc.returncode != 0
    assert "--storage" in proc.stdout and "RAC_STORAGE" in proc.stdout, proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout
    for resources in ray_cluster.runtime_resources():
        assert not list(resources.rglob("outputs")), list(resources.rglob("outputs"))


def test_without_the_token_the_cluster_refuses(ray_cluster):
    no_token = {k: v for k, v in ray_cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    no_token["HOME"] = tempfile.mkdtemp()  # no ~/.ray/auth_token to fall back on
    start = time.monotonic()
    proc = subprocess.run([str(BIN / "ray"), "job", "list", f"--address={ray_cluster.url}"], env=no_token,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < 120
