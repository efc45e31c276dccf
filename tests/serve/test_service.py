"""The request logic without HTTP: backend faults become 503/504 within the configured time.

The faults come from real servers: nothing listening (503 after the client's retries) and a
server that accepts connections but never answers (504 at ``ingress.retrieval_timeout_s``).
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from rac.models.factory import load_tokenizer
from rac.retrieval import RetrieverConfig, make_retriever
from rac.retrieval.config import ElasticsearchConfig
from rac.serving.config import IngressConfig, ServeConfig
from rac.serving.service import ClarifyService, ServingError


async def _must_not_generate(prompt: str, max_new_tokens: int) -> str:
    raise AssertionError("the generator must not be called when retrieval fails or finds nothing")


def _service(tiny_model_dir, retriever_cfg: RetrieverConfig, generate=_must_not_generate, **ingress) -> ClarifyService:
    cfg = ServeConfig(model_path=str(tiny_model_dir), retriever=retriever_cfg, ingress=IngressConfig(**ingress))
    return ClarifyService(cfg, make_retriever(cfg.retriever), load_tokenizer(tiny_model_dir), generate)


def test_unreachable_elasticsearch_is_503(tiny_model_dir, dead_url):
    es = ElasticsearchConfig(url=dead_url, max_retries=1, retry_backoff=0.05, request_timeout=2)
    service = _service(tiny_model_dir, RetrieverConfig(elasticsearch=es))
    t0 = time.monotonic()
    with pytest.raises(ServingError) as info:
        asyncio.run(service.clarify("jaguar"))
    assert info.value.status == 503 and info.value.retry_after_s
    assert dead_url not in info.value.message, "the client is not told where the backend lives"
    assert time.monotonic() - t0 < 5
    service.close()


def test_hanging_backend_is_504_at_the_retrieval_timeout(tiny_model_dir):
    # A server that accepts TCP connections (the kernel's backlog) and never answers.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        es = ElasticsearchConfig(url=url, max_retries=0, request_timeout=30)
        service = _service(tiny_model_dir, RetrieverConfig(elasticsearch=es), retrieval_timeout_s=1.0,
                           readiness_timeout_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(ServingError) as info:
            asyncio.run(service.clarify("jaguar"))
        elapsed = time.monotonic() - t0
        assert info.value.status == 504 and "did not answer within 1s" in info.value.message
        assert 0.9 < elapsed < 3, elapsed
        # Readiness says so too, within its own timeout.
        status = asyncio.run(service.ready())
        assert status["retriever"].startswith("no answer within")
        service.close()


def test_slow_generator_is_504_at_the_generation_timeout(tiny_model_dir, demo_index_dir):
    async def slow(prompt: str, max_new_tokens: int) -> str:
        await asyncio.sleep(30)
        return "too late"

    service = _service(tiny_model_dir, RetrieverConfig(index_dir=str(demo_index_dir)), generate=slow,
                       generation_timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(ServingError) as info:
        asyncio.run(service.clarify("jaguar"))
    assert info.value.status == 504 and time.monotonic() - t0 < 2
    service.close()


def test_unsearchable_query_is_422_on_the_query_field(tiny_model_dir, demo_index_dir):
    service = _service(tiny_model_dir, RetrieverConfig(index_dir=str(demo_index_dir)))
    with pytest.raises(ServingError) as info:
        asyncio.run(service.clarify("?!"))
    assert (info.value.status, info.value.field) == (422, "query")
    service.close()


def test_passages_prompt_and_grounding(tiny_model_dir, demo_index_dir):
    prompts: list[str] = []

    async def echo(prompt: str, max_new_tokens: int) -> str:
        prompts.append(prompt)
        return "Do you mean the Jaguar car brand founded in Blackpool?"

    service = _service(tiny_model_dir, RetrieverConfig(index_dir=str(demo_index_dir)), generate=echo)
    out = asyncio.run(service.clarify("jaguar", top_k=3, max_new_tokens=7))
    assert out["status"] == "answered"
    assert 1 <= len(out["passages"]) <= 3
    scores = [p["score"] for p in out["passages"]]
    assert scores == sorted(scores, reverse=True)
    # The grounded prompt carries the query and every passage, numbered.
    assert "Query: jaguar" in prompts[0]
    for i, p in enumerate(out["passages"], 1):
        assert f"[{i}] {p['text']}" in prompts[0]
    try:
        from rac.evaluation.grounding import parent_grounding
    except ImportError:
        assert out["grounding"] is None
    else:
        expected = parent_grounding(out["question"], [p["text"] for p in out["passages"]])
        assert out["grounding"] == pytest.approx(expected)
        assert out["grounding"]["precision"] > 0, "the question repeats passage words"
    service.close()


def test_query_no_passage_matches_is_answered_without_a_question(tiny_model_dir, demo_index_dir):
    # No word of the query is in the demo corpus: BM25 returns nothing, and nothing is generated
    # (_must_not_generate) from a prompt without passages.
    service = _service(tiny_model_dir, RetrieverConfig(index_dir=str(demo_index_dir)))
    out = asyncio.run(service.clarify("zyxwvut quokkaz"))
    assert out["status"] == "no_passages"
    assert out["question"] is None and out["passages"] == [] and out["grounding"] is None
    assert out["unsupported_spans"] is None and out["detector_support"] is None
    service.close()
