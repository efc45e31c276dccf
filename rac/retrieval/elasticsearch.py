"""Elasticsearch BM25 backend, with the official ``elasticsearch`` client.

The index has an explicit mapping (``dynamic: strict``: a document with an unexpected
field is rejected, not silently widened), the configured analyzer, and BM25 similarity
with ``k1`` and ``b`` from config. Every request is retried a bounded number of times
with exponential backoff on connection errors, timeouts and 429/502/503/504 answers;
after that a :class:`ServerUnavailableError` says which server and what failed.
Credentials come from environment variables named in the config and are never logged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rac.retrieval.base import Hit, IndexMissingError, RetrievalError, ServerUnavailableError
from rac.retrieval.config import ElasticsearchConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUS = (429, 502, 503, 504)


def _client_module():
    try:
        import elasticsearch
        from elasticsearch import helpers
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the Elasticsearch backend needs the client: pip install elasticsearch") from e
    return elasticsearch, helpers


def index_body(k1: float, b: float, analyzer: str, number_of_shards: int) -> dict[str, Any]:
    """Settings and mappings of the passage index."""
    return {
        "settings": {
            "number_of_shards": number_of_shards,
            "similarity": {"default": {"type": "BM25", "k1": k1, "b": b}},
            "analysis": {"analyzer": {"rac_text": {"type": analyzer}}},
        },
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "id": {"type": "keyword"},
                "text": {"type": "text", "analyzer": "rac_text"},
                "source": {"type": "keyword"},
            },
        },
    }


class ElasticsearchRetriever:
    """Index and search passages in one Elasticsearch index.

    Parameters
    ----------
    cfg
        Connection, index and retry settings (``retriever.elasticsearch``).
    k1, b
        BM25 parameters, applied when this object creates the index.
    """

    def __init__(self, cfg: ElasticsearchConfig, k1: float = 1.2, b: float = 0.75):
        if not cfg.url:
            raise RetrievalError("retriever.elasticsearch.url is not set")
        es, _ = _client_module()
        self.cfg, self.k1, self.b = cfg, k1, b
        self.index = cfg.index_name
        kwargs: dict[str, Any] = {"request_timeout": cfg.request_timeout, "max_retries": 0,
                                  "retry_on_timeout": False}
        if os.environ.get(cfg.api_key_env):
            kwargs["api_key"] = os.environ[cfg.api_key_env]
        elif os.environ.get(cfg.username_env):
            kwargs["basic_auth"] = (os.environ[cfg.username_env], os.environ.get(cfg.password_env, ""))
        if cfg.url.startswith("https://"):
            kwargs["verify_certs"] = cfg.verify_certs
            if cfg.ca_certs:
                kwargs["ca_certs"] = cfg.ca_certs
        self.client = es.Elasticsearch(cfg.url, **kwargs)
        self._retryable = (es.ConnectionError, es.ConnectionTimeout)
        self._api_error = es.ApiError

    # ------------------------------------------------------------------ plumbing

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with bounded retries and exponential backoff on transient failures."""
        delay = self.cfg.retry_backoff
        for attempt in range(self.cfg.max_retries + 1):
            try:
                return fn()
            except self._retryable as e:
                last: Exception = e
            except self._api_error as e:
                if e.status_code not in RETRY_STATUS:
                    raise
                last = e
            if attempt < self.cfg.max_retries:
                logger.warning("%s on %s failed (%s: %s); retry %d/%d in %.1fs", what, self.cfg.url,
                               type(last).__name__, last, attempt + 1, self.cfg.max_retries, delay)
                time.sleep(delay)
                delay *= 2
        raise ServerUnavailableError(
            f"{what} on Elasticsearch at {self.cfg.url} failed after {self.cfg.max_retries + 1} attempts: "
            f"{type(last).__name__}: {last}. Check that the server is up and reachable, or raise "
            f"retriever.elasticsearch.max_retries / request_timeout") from last

    def check_ready(self, need_index: bool = True) -> None:
        """Fail fast: the server answers, and (``need_index``) the index exists."""
        self._call("info", lambda: self.client.info())
        if need_index and not self._call("index check", lambda: bool(self.client.indices.exists(index=self.index))):
            raise IndexMissingError(
                f"index '{self.index}' does not exist on {self.cfg.url}; run `python -m jobs.index` "
                f"with the same retriever settings first, or set retriever.elasticsearch.index_name")

    # ------------------------------------------------------------------ indexing

    def create_index(self, recreate: bool = False) -> None:
        """Create the index with its mapping, BM25 similarity and analyzer."""
        exists = self._call("index check", lambda: bool(self.client.indices.exists(index=self.index)))
        if exists and not recreate:
            raise RetrievalError(f"index '{self.index}' already exists on {self.cfg.url}; set recreate: true "
                                 f"to replace it, or choose another retriever.elasticsearch.index_name")
        if exists:
            self._call("delete index", lambda: self.client.indices.delete(index=self.index))
        body = index_body(self.k1, self.b, self.cfg.analyzer, self.cfg.number_of_shards)
        self._call("create index", lambda: self.client.indices.create(index=self.index, **body))

    def index_passages(self, passages: list[dict[str, Any]]) -> list[dict[str, str]]:
        """Bulk-index ``passages`` (``{id, text, source?}``) with ``streaming_bulk``.

        Returns one ``{"id", "error"}`` per passage that was not indexed: documents the
        server rejected (with its reason) and, if the server stayed unreachable through
        the retries, every passage of the chunks that could not be sent.
        """
        _, helpers = _client_module()
        failures: list[dict[str, str]] = []
        size = self.cfg.bulk_chunk_size
        for start in range(0, len(passages), size):
            chunk = passages[start:start + size]
            actions = [{"_index": self.index, "_id": p["id"],
                        "_source": {"id": p["id"], "text": p["text"], "source": p.get("source") or ""}}
                       for p in chunk]

            def send(actions=actions) -> list[tuple[bool, dict[str, Any]]]:
                return list(helpers.streaming_bulk(
                    self.client, actions, chunk_size=size, raise_on_error=False, raise_on_exception=False,
                    max_retries=self.cfg.max_retries, initial_backoff=self.cfg.retry_backoff, yield_ok=False))

            try:
                results = self._call("bulk", send)
            except ServerUnavailableError as e:
                failures.extend({"id": p["id"], "error": str(e)} for p in chunk)
                continue
            for ok, item in results:
                if not ok:
                    info = next(iter(item.values()))
                    failures.append({"id": str(info.get("_id")), "error": _reason(info.get("error"))})
        return failures

    def refresh(self) -> None:
        self._call("refresh", lambda: self.client.indices.refresh(index=self.index))

    def count(self) -> int:
        return int(self._call("count", lambda: self.client.count(index=self.index))["count"])

    # ------------------------------------------------------------------ search

    def search(self, queries: list[str], top_k: int) -> list[list[Hit] | str]:
        """Top-``top_k`` passages per query through ``msearch``, in batches."""
        results: list[list[Hit] | str] = []
        step = self.cfg.msearch_batch_size
        for start in range(0, len(queries), step):
            batch = queries[start:start + step]
            searches: list[dict[str, Any]] = []
            for q in batch:
                searches.append({"index": self.index})
                searches.append({"query": {"match": {"text": q}}, "size": top_k, "_source": ["text"],
                                 "track_total_hits": False})
            resp = self._call("msearch", lambda s=searches: self.client.msearch(searches=s))
            for r in resp["responses"]:
                if "error" in r:
                    if r.get("status") == 404:
                        raise IndexMissingError(f"index '{self.index}' does not exist on {self.cfg.url}; "
                                                f"run `python -m jobs.index` first")
                    results.append(f"search failed: {_reason(r['error'])}")
                else:
                    results.append([{"id": h["_id"], "text": h["_source"]["text"], "score": float(h["_score"])}
                                    for h in r["hits"]["hits"]])
        return results

    def close(self) -> None:
        self.client.close()


def _reason(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', error)}"
    return str(error)
