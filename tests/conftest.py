"""Session fixtures: real local Ray, a real Elasticsearch-API server on 127.0.0.1, the data."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from rac.testing.es_server import free_port, local_es_server

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
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine spinning OpenMP
    threads slow them down tenfold. Folders of in-process model tests make it autouse."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance of this session (never attaches to a running cluster)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def es_url():
    """An Elasticsearch-API server: RAC_TEST_ES_URL if set, else noida-db started here
    (and stopped at the end of the session by its own handle)."""
    if os.environ.get("RAC_TEST_ES_URL"):
        yield os.environ["RAC_TEST_ES_URL"].rstrip("/")
        return
    with local_es_server() as url:
        yield url


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
    return f"http://127.0.0.1:{free_port()}"
