"""Session fixtures: real local Ray, a real Elasticsearch-API server on 127.0.0.1, the data."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parents[1]
QULAC_PATH = REPO.parent / "shared" / "data" / "qulac" / "qulac.json"


@pytest.fixture(scope="session")
def qulac_path() -> Path:
    if not QULAC_PATH.is_file():
        pytest.skip(f"Qulac not found at {QULAC_PATH} (CI keeps ../shared beside the checkout)")
    return QULAC_PATH


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance of this session (never attaches to a running cluster)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2,
             log_to_driver=False)
    yield ray
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"test server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@pytest.fixture(scope="session")
def es_url():
    """An Elasticsearch-API server: RAC_TEST_ES_URL if set, else noida-db started here.

    The process started here is stopped by its own handle at the end of the session.
    """
    if os.environ.get("RAC_TEST_ES_URL"):
        yield os.environ["RAC_TEST_ES_URL"].rstrip("/")
        return
    binary = shutil.which("noida-db", path=str(Path(sys.executable).parent)) or shutil.which("noida-db")
    if binary is None:
        pytest.fail("noida-db is not installed: run `make test` (it installs the dev extras)")
    port = _free_port()
    data_dir = tempfile.mkdtemp(prefix="rac-es-")
    log = open(Path(data_dir) / "server.log", "w")
    proc = subprocess.Popen(
        [binary, "start", "--data-dir", data_dir, "--host", "127.0.0.1", "--only", "elasticsearch",
         "--elasticsearch-port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url, timeout=30, proc=proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def es_config(es_url):
    """A config for a fresh index of this test; the index is deleted afterwards."""
    from rac.retrieval import ElasticsearchConfig, ElasticsearchRetriever

    cfg = ElasticsearchConfig(url=es_url, index_name=f"rac-test-{uuid.uuid4().hex[:8]}", max_retries=1,
                              retry_backoff=0.1)
    yield cfg
    es = ElasticsearchRetriever(cfg)
    es.client.indices.delete(index=cfg.index_name, ignore_unavailable=True)
    es.close()


@pytest.fixture
def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    return f"http://127.0.0.1:{_free_port()}"
