"""The Elasticsearch backend against a real Elasticsearch-API server on 127.0.0.1."""

import random
import string
import threading
import time

import pytest

from rac.config import to_dict
from rac.retrieval import (
    ElasticsearchConfig,
    ElasticsearchRetriever,
    EmbeddedBM25Retriever,
    IndexMissingError,
    ServerUnavailableError,
)
from rac.testing.es_server import free_port, start_server, stop_server
from tests.retrieval.bm25_reference import ReferenceBM25


def synthetic_corpus(n_docs=1200, seed=0):
    """Zipf-distributed made-up words; lengths 5-120 tokens so Lucene's length rounding matters."""
    rng = random.Random(seed)
    vocab = sorted({"".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
                    for _ in range(400)})
    weights = [1 / (i + 1) for i in range(len(vocab))]
    docs = {f"d{i:04d}": " ".join(rng.choices(vocab, weights, k=rng.randint(5, 120))) for i in range(n_docs)}
    queries = [" ".join(rng.sample(vocab[:200], rng.randint(1, 4))) for _ in range(40)]
    return docs, queries


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_corpus()


def same_top_k(a, b, tol=1e-4):
    """Same top-k set, where passages tied at the k-th score may be either tie.

    Elasticsearch breaks ties by internal document order, which depends on how bulk
    requests interleaved; a set comparison that ignored this would count ties as misses.
    """
    if len(a) != len(b):
        return False
    if not a:
        return True
    if any(abs(x["score"] - y["score"]) > tol for x, y in zip(a, b, strict=True)):
        return False
    cut = a[-1]["score"]
    above = lambda hits: {h["id"] for h in hits if h["score"] > cut + tol}  # noqa: E731
    return above(a) == above(b)


def test_same_top_k_allows_only_ties_at_the_cut():
    hit = lambda i, s: {"id": i, "score": s}  # noqa: E731
    assert same_top_k([hit("a", 3), hit("b", 1)], [hit("a", 3), hit("c", 1)])
    assert not same_top_k([hit("a", 3), hit("b", 1)], [hit("c", 3), hit("a", 1)])
    assert not same_top_k([hit("a", 3), hit("b", 2)], [hit("a", 3), hit("c", 1)])


def _indexed(cfg, passages, k1=1.2, b=0.75):
    es = ElasticsearchRetriever(cfg, k1=k1, b=b)
    es.create_index(recreate=True)
    assert es.index_passages(passages) == []
    es.refresh()
    return es


def test_scores_equal_lucene_bm25_reference(es_config, synthetic):
    docs, queries = synthetic
    es = _indexed(es_config, [{"id": d, "text": t} for d, t in docs.items()])
    assert es.count() == len(docs) >= 1000
    settings = es.client.indices.get_settings(index=es_config.index_name)[es_config.index_name]["settings"]
    assert settings["index"]["similarity"]["default"] == {"type": "BM25", "k1": "1.2", "b": "0.75"}
    ref = ReferenceBM25(docs)
    results = es.search(queries, top_k=10)
    assert len(results) == len(queries)
    for query, hits in zip(queries, results, strict=True):
        expected = sorted(ref.scores(query).values(), reverse=True)[:10]
        assert len(hits) == len(expected) > 0
        for hit in hits:
            assert hit["score"] == pytest.approx(ref.score(query, hit["id"]), abs=1e-4)
            assert hit["text"] == docs[hit["id"]]
        # The server's top 10 are the reference's top 10 (up to ties at the cut).
        assert [h["score"] for h in hits] == pytest.approx(expected, abs=1e-4)
    es.close()


def test_embedded_backend_honours_k1_and_b(tmp_path, synthetic):
    docs, queries = synthetic
    EmbeddedBM25Retriever.build([{"id": d, "text": t} for d, t in docs.items()], tmp_path, k1=2.0, b=0.3)
    embedded = EmbeddedBM25Retriever(tmp_path)
    # bm25s uses exact document lengths: equal to the reference without Lucene's length rounding.
    ref = ReferenceBM25(docs, k1=2.0, b=0.3, quantize=False)
    for query, hits in zip(queries, embedded.search(queries, top_k=10), strict=True):
        assert [h["score"] for h in hits] == pytest.approx(sorted(ref.scores(query).values(), reverse=True)[:10],
                                                          rel=1e-9)
        for hit in hits:
            assert hit["score"] == pytest.approx(ref.score(query, hit["id"]), rel=1e-9)


def test_embedded_and_elasticsearch_agree_on_qulac_top10(es_config, qulac_path, tmp_path):
    from rac.data import build_corpus
    from rac.data.loaders import load_qulac

    data = load_qulac(qulac_path)
    corpus = build_corpus(data.documents)
    queries = sorted({r["query"] for r in data.records})
    es = _indexed(es_config, corpus)
    EmbeddedBM25Retriever.build(corpus, tmp_path)
    embedded = EmbeddedBM25Retriever(tmp_path)
    es_hits, emb_hits = es.search(queries, 10), embedded.search(queries, 10)
    same = sum(same_top_k(a, b) for a, b in zip(es_hits, emb_hits, strict=True))
    assert len(queries) == 198
    assert same / len(queries) >= 0.95, f"top-10 sets agree on {same} of {len(queries)} queries"
    es.close()


def test_rejected_document_is_reported_by_id(es_config):
    es = ElasticsearchRetriever(es_config)
    es.create_index()
    passages = [{"id": "good-1", "text": "a passage"}, {"id": "bad-1", "text": {"not": "text"}},
                {"id": "good-2", "text": "another passage"}]
    failures = es.index_passages(passages)
    assert [f["id"] for f in failures] == ["bad-1"]
    assert "parsing" in failures[0]["error"]  # the server's own reason
    es.refresh()
    assert es.count() == 2


def test_existing_index_needs_recreate(es_config):
    from rac.retrieval import RetrievalError

    es = ElasticsearchRetriever(es_config)
    es.create_index()
    with pytest.raises(RetrievalError, match="already exists.*recreate: true"):
        es.create_index(recreate=False)


def test_missing_index_is_a_clear_error(es_config):
    es = ElasticsearchRetriever(es_config)
    with pytest.raises(IndexMissingError, match=rf"index '{es_config.index_name}' does not exist.*jobs.index"):
        es.check_ready()
    with pytest.raises(IndexMissingError, match="does not exist"):
        es.search(["jaguar"], 5)


def test_unreachable_server_fails_after_bounded_retries(dead_url, monkeypatch, caplog):
    monkeypatch.setenv("RAC_ES_API_KEY", "secret-key-123")
    cfg = ElasticsearchConfig(url=dead_url, max_retries=2, retry_backoff=0.1, request_timeout=2)
    es = ElasticsearchRetriever(cfg)
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError, match=rf"{dead_url} failed after 3 attempts") as info:
        es.search(["jaguar"], 5)
    assert time.monotonic() - start < 10
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2
    # Bulk indexing reports every passage of the lost chunk by id instead of raising.
    failures = es.index_passages([{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
    assert [f["id"] for f in failures] == ["a", "b"] and "failed after 3 attempts" in failures[0]["error"]
    # The API key comes from the environment and shows up nowhere.
    assert "secret-key-123" not in caplog.text + str(info.value) + str(to_dict(cfg)) + repr(es.client)


def test_transient_outage_is_retried(tmp_path, caplog):
    """A server that comes up while the client is backing off is reached without an error."""
    port = free_port()
    es = ElasticsearchRetriever(ElasticsearchConfig(url=f"http://127.0.0.1:{port}", max_retries=6,
                                                    retry_backoff=0.5))
    launched = []  # (when the server was launched, its process)
    timer = threading.Timer(1.0, lambda: launched.append((time.monotonic(), start_server(port, tmp_path))))
    timer.start()
    try:
        es.check_ready(need_index=False)  # retries through the outage
        answered = time.monotonic()
        retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
        # Refused while nothing listened, retried, and answered by the server once it was launched.
        assert retries and all(m.startswith(f"info on http://127.0.0.1:{port} failed") for m in retries), retries
        assert len(retries) < 6
        assert launched and answered > launched[0][0]
    finally:
        timer.join()
        for _, proc in launched:
            stop_server(proc)
