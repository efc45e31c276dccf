"""The Serve application over real HTTP on 127.0.0.1: a tiny model, the embedded BM25 index.

Two applications are deployed once for the module on the session's local Ray
(``ray_local``): ``rac`` (API key from a secret file, small limits, batches of up to 4) and
``slow`` (a generator that waits 5 s per batch behind a 1 s generation timeout). Serve is
shut down at the end of the module; Ray belongs to the session fixture.
"""

from __future__ import annotations

import http.client
import json
import secrets
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from rac.testing.es_server import free_port

pytestmark = pytest.mark.slow  # Ray Serve deployments behind real HTTP: CI's whole suite, not the quick `make test`

MAX_BODY = 2048
MAX_BATCH = 4
KEY = "test-key-" + secrets.token_hex(8)


#: Low enough that the tiny random detector flags words, so the spans' offsets are exercised.
THRESHOLD = 0.01


def _args(model: Path, index: Path, key_file: Path | None, detector: Path | None = None,
          **generator: Any) -> dict[str, Any]:
    small = {"num_cpus": 0.25, "autoscaling": {"min_replicas": 1, "max_replicas": 1}}
    return {
        "detector": {"path": str(detector) if detector else None, "threshold": THRESHOLD, "precision": "float32"},
        "model_path": str(model),
        "retriever": {"index_dir": str(index), "top_k": 3, "max_query_chars": 300},
        "generator": {"max_batch_size": MAX_BATCH, "batch_wait_timeout_s": 0.25, "max_new_tokens": 8,
                      "max_prompt_tokens": 400, "torch_threads": 1,
                      "deployment": {**small, "max_ongoing_requests": 2 * MAX_BATCH}, **generator},
        "ingress": {"generation_timeout_s": 1.0 if generator.get("test_delay_s") else 30.0,
                    "deployment": {**small, "max_ongoing_requests": 64}},
        "limits": {"max_body_bytes": MAX_BODY, "max_top_k": 10, "max_new_tokens": 16},
        "auth": {"api_key_env": "RAC_SERVE_TEST_UNSET_KEY", "api_key_file": str(key_file) if key_file else None},
    }


@pytest.fixture(scope="module")
def base_url(ray_local, tiny_model_dir, wordy_model_dir, demo_index_dir, tiny_detector_dir, tmp_path_factory):
    from ray import serve

    from serve.app import build_app

    key_file = tmp_path_factory.mktemp("secret") / "api-key"
    key_file.write_text(KEY + "\n")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run_many([
            serve.RunTarget(build_app(_args(tiny_model_dir, demo_index_dir, key_file)), name="rac", route_prefix="/"),
            serve.RunTarget(build_app(_args(tiny_model_dir, demo_index_dir, None, test_delay_s=5.0)), name="slow",
                            route_prefix="/slow"),
            serve.RunTarget(build_app(_args(wordy_model_dir, demo_index_dir, None, detector=tiny_detector_dir)),
                            name="detector", route_prefix="/det"),
        ])
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def call(base: str, path: str, body: Any = None, *, key: str | None = KEY, raw: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, Any, dict[str, str]]:
    """(status, parsed JSON body or text, headers) of one request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if key:
        hdrs["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(base + path, data=data, headers=hdrs, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text, rh = resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        status, text, rh = e.code, e.read().decode(), dict(e.headers)
    # No stack trace ever reaches a client, whatever the status.
    assert "Traceback" not in text and 'File "' not in text, text
    try:
        return status, json.loads(text), rh
    except json.JSONDecodeError:
        return status, text, rh


def test_clarify_answers_with_passages_question_and_grounding(base_url, tiny_model_dir, demo_index_dir):
    from rac.models.prompts import build_prompt
    from rac.retrieval import EmbeddedBM25Retriever
    from rac.serving.generator import QuestionGenerator

    status, body, _ = call(base_url, "/v1/clarify", {"query": "jaguar", "top_k": 2, "max_new_tokens": 6})
    assert status == 200, body
    assert set(body) == {"status", "question", "passages", "model", "grounding", "unsupported_spans",
                         "detector_support", "latency_ms"}
    assert body["status"] == "answered"
    # No detector configured: no spans, and the schema's description says so.
    assert body["unsupported_spans"] is None and body["detector_support"] is None
    # The passages are the configured backend's top 2 for the query, best first.
    expected = EmbeddedBM25Retriever(demo_index_dir).search(["jaguar"], 2)[0]
    assert [p["id"] for p in body["passages"]] == [p["id"] for p in expected]
    assert [p["score"] for p in body["passages"]] == pytest.approx([p["score"] for p in expected])
    assert all("jaguar" in p["text"].lower() for p in body["passages"])
    # The question is the served model's greedy answer to the grounded prompt of those passages.
    generator = QuestionGenerator(tiny_model_dir, torch_threads=1)
    prompt = build_prompt(generator.tokenizer, "jaguar", expected, grounded=True, max_tokens=400).text
    assert body["question"] == generator.generate([prompt], 6)[0]
    assert body["model"] == tiny_model_dir.name
    assert body["latency_ms"] > 0
    try:
        from rac.evaluation.grounding import parent_grounding
    except ImportError:  # the scorer is another module's; only its value check is skipped without it
        assert body["grounding"] is None
    else:
        assert body["grounding"] == pytest.approx(
            parent_grounding(body["question"], [p["text"] for p in body["passages"]]))
    # Defaults from config when the request leaves them out.
    status, body, _ = call(base_url, "/v1/clarify", {"query": "mars rover"})
    assert status == 200 and len(body["passages"]) == 3


def test_query_no_passage_matches_gets_no_question(base_url):
    stats = call(base_url, "/v1/stats")[1]
    status, body, _ = call(base_url, "/v1/clarify", {"query": "zyxwvut quokkaz"})
    assert status == 200, body
    assert body["status"] == "no_passages" and body["question"] is None and body["passages"] == []
    assert call(base_url, "/v1/stats")[1]["requests"] == stats["requests"], "nothing was generated"
    # The schema a client reads says so.
    schema = call(base_url, "/openapi.json")[1]["components"]["schemas"]["ClarifyResponse"]
    assert schema["properties"]["status"]["enum"] == ["answered", "no_passages"]
    assert "status" in schema["required"]


def test_api_key_is_required_on_every_route_but_the_probes(base_url):
    for path, body in [("/v1/clarify", {"query": "jaguar"}), ("/v1/stats", None), ("/openapi.json", None),
                       ("/no-such-route", None), ("/healthz/x", None), ("/readyzz", None)]:
        status, err, headers = call(base_url, path, body, key=None)
        assert status == 401 and err["error"] == "unauthorized", (path, err)
        assert headers.get("www-authenticate", headers.get("WWW-Authenticate", "")).startswith("Bearer")
        assert call(base_url, path, body, key="wrong-" + KEY)[0] == 401
    assert call(base_url, "/v1/stats", key=None, headers={"X-API-Key": KEY})[0] == 200
    # Kubernetes probes cannot send a key from a Secret: the probe paths answer without one.
    assert call(base_url, "/healthz", key=None)[:2] == (200, {"status": "ok"})
    assert call(base_url, "/readyz", key=None)[0] == 200
    status, schema, _ = call(base_url, "/openapi.json")
    assert status == 200
    assert {"/v1/clarify", "/healthz", "/readyz", "/v1/stats"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/healthz"]["get"]["security"] == []  # the probes are open ...
    assert "security" not in schema["paths"]["/v1/clarify"]["post"]  # ... the rest takes the global scheme
    request_schema = schema["components"]["schemas"]["ClarifyRequest"]["properties"]
    assert request_schema["query"]["maxLength"] == 300  # the served limits are the documented ones


@pytest.mark.parametrize(("raw", "status", "field"), [
    (b'{"query": ""}', 422, "query"),
    (b'{"query": "   "}', 422, "query"),
    (b'{"query": "?!"}', 422, "query"),
    (b'{"query": 42}', 422, "query"),
    (b'{"top_k": 2}', 422, "query"),
    (b'{"query": "jaguar", "top_k": "3"}', 422, "top_k"),
    (b'{"query": "jaguar", "top_k": 0}', 422, "top_k"),
    (b'{"query": "jaguar", "top_k": 11}', 422, "top_k"),
    (b'{"query": "jaguar", "max_new_tokens": 17}', 422, "max_new_tokens"),
    (b'{"query": "jaguar", "max_new_tokens": 2.5}', 422, "max_new_tokens"),
    (b'{"query": "jaguar", "stream": true}', 422, "stream"),
    (b'{"query": "jag', 422, "body"),
    (b'["jaguar"]', 422, "body"),
    (json.dumps({"query": "jaguar " * 50}).encode(), 422, "query"),  # over max_query_chars, under the body limit
    (json.dumps({"query": "x" * MAX_BODY}).encode(), 413, None),
])
def test_bad_input_is_rejected_naming_the_field(base_url, raw, status, field):
    got, body, _ = call(base_url, "/v1/clarify", raw=raw)
    assert got == status, body
    if field:
        assert field in [f["field"] for f in body["fields"]], body
        assert field in body["message"]
    else:
        assert body["error"] == "payload_too_large"


def test_oversize_chunked_body_is_413_and_the_app_keeps_serving(base_url):
    # No Content-Length: the limit holds on the bytes actually received.
    conn = http.client.HTTPConnection(base_url.removeprefix("http://"), timeout=30)
    chunks = [b'{"query": "'] + [b"a" * 512] * (MAX_BODY // 512 + 2) + [b'"}']
    conn.request("POST", "/v1/clarify", body=iter(chunks), encode_chunked=True,
                 headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 413, resp.read()
    conn.close()
    # After every kind of bad request above, a good one is still answered.
    status, body, _ = call(base_url, "/v1/clarify", {"query": "python"})
    assert status == 200 and body["passages"]


def test_concurrent_requests_are_generated_in_batches(base_url):
    before = call(base_url, "/v1/stats")[1]
    assert before["max_batch_size"] == MAX_BATCH  # the configured size, as the replica reports it
    n = 12
    queries = ["jaguar", "mars", "python", "apple", "java", "mercury"] * 2
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda q: call(base_url, "/v1/clarify", {"query": q}), queries))
    assert [r[0] for r in results] == [200] * n
    after = call(base_url, "/v1/stats")[1]
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == n
    assert batches < n, after  # some requests shared one generate call
    assert 2 <= after["max_batch_size_seen"] <= MAX_BATCH, after


def test_slow_generator_gives_504_within_the_timeout(base_url):
    t0 = time.monotonic()
    status, body, _ = call(base_url, "/slow/v1/clarify", {"query": "jaguar"}, key=None)
    elapsed = time.monotonic() - t0
    assert status == 504, body
    assert body["error"] == "timeout" and "generator" in body["message"]
    assert elapsed < 4, f"answered after {elapsed:.1f}s; the generation timeout is 1s, the generator takes 5s"
    # The ingress is still there for the next request.
    assert call(base_url, "/slow/healthz", key=None)[0] == 200


def test_health_and_readiness(base_url):
    assert call(base_url, "/healthz")[:2] == (200, {"status": "ok"})
    status, body, _ = call(base_url, "/readyz")
    assert status == 200 and body == {"status": "ready", "components": {"retriever": "ok", "generator": "ok",
                                                                        "detector": "not configured"}}
    assert "detector: not configured" in call(base_url, "/openapi.json")[1]["info"]["description"]
    status, body, _ = call(base_url, "/det/readyz", key=None)
    assert status == 200 and body["components"]["detector"] == "ok"


def test_answer_marks_unsupported_spans_over_http(base_url, tiny_detector_dir):
    from rac.detector import UnsupportedSpanDetector

    status, body, _ = call(base_url, "/det/v1/clarify", {"query": "jaguar", "top_k": 2, "max_new_tokens": 8},
                           key=None)
    assert status == 200, body
    # The spans are the detector's own reading of the served question and passages, at the threshold.
    result = UnsupportedSpanDetector(tiny_detector_dir).score([body["question"]], [body["passages"]])[0]
    assert body["unsupported_spans"] == result.spans(THRESHOLD)
    assert body["detector_support"] == pytest.approx(result.support, abs=1e-4)
    assert body["unsupported_spans"], f"no content word flagged in {body['question']!r} at {THRESHOLD}"
    for span in body["unsupported_spans"]:
        assert body["question"][span["start"]:span["end"]] == span["text"]
        assert span["probability"] >= THRESHOLD
    description = call(base_url, "/det/openapi.json", key=None)[1]["info"]["description"]
    assert "detector: configured" in description


def test_api_key_never_reaches_the_logs(base_url, ray_local):
    # Runs after the requests above (pytest keeps file order), which sent the key and wrong keys.
    # ray.init on a connected driver returns the running session's context.
    logs = Path(ray_local.init(ignore_reinit_error=True).address_info["session_dir"]) / "logs"
    assert call(base_url, "/healthz")[0] == 200
    files = [p for p in logs.rglob("*") if p.is_file() and p.suffix in (".log", ".out", ".err")]
    assert any("serve" in str(p) for p in files), "no Serve logs found to check"
    for path in files:
        assert KEY not in path.read_text(errors="replace"), f"API key found in {path}"
