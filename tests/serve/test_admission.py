"""Admission control: a request the generator's queue cannot finish within the deadline is
refused at once with 503 and Retry-After, instead of waiting for 504.

The estimate is checked on a clock the test moves (no timing), then end to end over real HTTP:
the ingress app (``create_app``) under uvicorn on 127.0.0.1, in front of a generator that takes
a known time and generates one prompt at a time.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from rac.serving.admission import GenerationQueue, Overloaded


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _measure(queue: GenerationQueue, clock: Clock, seconds: float) -> None:
    with queue.admit():
        clock.now += seconds


def test_unmeasured_queue_admits_everything():
    queue = GenerationQueue(batch_size=1, replicas=1, deadline_s=1.0, clock=Clock())
    with queue.admit(), queue.admit(), queue.admit():
        assert queue.in_flight == 3 and queue.expected_s() is None


def test_request_behind_a_full_wave_is_refused_with_retry_after():
    clock = Clock()
    queue = GenerationQueue(batch_size=1, replicas=1, deadline_s=3.0, clock=clock)
    _measure(queue, clock, 2.0)
    assert queue.wave_s == 2.0 and queue.expected_s() == 2.0
    with queue.admit():
        clock.now += 0.5
        # One generating (1.5 s left) fills the wave: the next waits for the next wave, 3.5 s in all.
        assert queue.expected_s() == pytest.approx(3.5)
        with pytest.raises(Overloaded) as info:
            with queue.admit():
                raise AssertionError("not admitted")
        assert info.value.expected_s == pytest.approx(3.5) and info.value.retry_after_s == 1
        assert queue.in_flight == 1  # the refused request holds no place
        clock.now += 0.6
        with queue.admit():  # 2.9 s now: in time
            pass


def test_requests_fill_waves_of_the_batch_size_on_every_replica():
    clock = Clock()
    queue = GenerationQueue(batch_size=1, replicas=2, deadline_s=5.0, clock=clock)
    _measure(queue, clock, 2.0)
    with queue.admit():
        # One in flight, two replicas: the other replica is idle.
        assert queue.expected_s() == 2.0
        with queue.admit():
            # Each replica busy with one: the next wave, 4 s.
            assert queue.expected_s() == pytest.approx(4.0)
    batched = GenerationQueue(batch_size=4, replicas=1, deadline_s=3.0, clock=clock)
    _measure(batched, clock, 2.0)
    with ExitStack() as stack:
        for _ in range(3):
            stack.enter_context(batched.admit())
        # Arrived together, the fourth is batched with the first three ...
        assert batched.expected_s() == 2.0
        stack.enter_context(batched.admit())
        # ... and the fifth falls into the second wave: refused.
        assert batched.expected_s() == pytest.approx(4.0)
        with pytest.raises(Overloaded), batched.admit():
            pass
        clock.now += 1.5
        assert batched.expected_s() == pytest.approx(2.5)
        # A wave that should have ended: whatever is left, a request takes at least a wave.
        clock.now += 10
        assert batched.expected_s() == 2.0


def test_measurements_follow_the_load():
    clock = Clock()
    queue = GenerationQueue(batch_size=1, replicas=1, deadline_s=60.0, smoothing=0.5, clock=clock)
    _measure(queue, clock, 2.0)
    _measure(queue, clock, 4.0)
    assert queue.wave_s == pytest.approx(3.0)
    # A generation that timed out counts with its latency (a lower bound of the real one).
    with pytest.raises(TimeoutError), queue.admit():
        clock.now += 7.0
        raise TimeoutError
    assert queue.wave_s == pytest.approx(5.0)
    # ... which cannot lower the estimate.
    with pytest.raises(TimeoutError), queue.admit():
        clock.now += 1.0
        raise TimeoutError
    assert queue.wave_s == pytest.approx(5.0)
    # One that failed says nothing about the time a wave takes.
    with pytest.raises(RuntimeError), queue.admit():
        clock.now += 100.0
        raise RuntimeError("generator died")
    assert queue.wave_s == pytest.approx(5.0) and queue.in_flight == 0


def test_idle_generator_is_tried_even_when_slower_than_the_deadline():
    clock = Clock()
    queue = GenerationQueue(batch_size=1, replicas=1, deadline_s=3.0, clock=clock)
    _measure(queue, clock, 10.0)
    with queue.admit():  # nothing in flight: tried, and measured again
        with pytest.raises(Overloaded), queue.admit():
            pass
        clock.now += 1.0
    assert queue.wave_s < 10.0  # the load has gone: the estimate follows


def test_shedding_off_admits_what_is_expected_late():
    clock = Clock()
    queue = GenerationQueue(batch_size=1, replicas=1, deadline_s=1.0, shed=False, clock=clock)
    _measure(queue, clock, 2.0)
    with queue.admit(), queue.admit():
        assert queue.expected_s() > 1.0


GENERATE_S = 2.0


@pytest.fixture(scope="module")
def overload_url(tiny_model_dir, demo_index_dir):
    """The ingress app with a one-prompt-at-a-time generator of GENERATE_S seconds and a deadline of
    1.5 * GENERATE_S: a request queued behind one generating cannot finish in time."""
    import uvicorn

    from rac.models.factory import load_tokenizer
    from rac.retrieval import RetrieverConfig, make_retriever
    from rac.serving.config import GeneratorConfig, IngressConfig, ServeConfig
    from rac.serving.http import create_app
    from rac.serving.service import ClarifyService
    from rac.testing.es_server import free_port

    lock = asyncio.Lock()

    async def one_at_a_time(prompt: str, max_new_tokens: int) -> str:
        async with lock:
            await asyncio.sleep(GENERATE_S)
            return "Which jaguar do you mean?"

    cfg = ServeConfig(model_path=str(tiny_model_dir), retriever=RetrieverConfig(index_dir=str(demo_index_dir)),
                      generator=GeneratorConfig(max_batch_size=1),
                      ingress=IngressConfig(generation_timeout_s=1.5 * GENERATE_S))
    service = ClarifyService(cfg, make_retriever(cfg.retriever), load_tokenizer(tiny_model_dir), one_at_a_time)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg, service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    service.close()


def _clarify(url: str, finished: list[int]) -> tuple[int, dict, dict]:
    req = urllib.request.Request(url + "/v1/clarify", data=json.dumps({"query": "jaguar"}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            result = resp.status, json.loads(resp.read()), dict(resp.headers)
    except urllib.error.HTTPError as e:
        result = e.code, json.loads(e.read()), dict(e.headers)
    finished.append(result[0])
    return result


def test_overload_is_shed_at_once_with_503_and_retry_after(overload_url):
    finished: list[int] = []
    # The first request measures the generator; alone, it is answered.
    assert _clarify(overload_url, finished)[0] == 200
    n = 6
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(lambda _: _clarify(overload_url, finished), range(n)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [200] + [503] * (n - 1), statuses
    # Refused before the admitted one was answered, not after waiting out the deadline (no 504).
    assert finished[1:] == [503] * (n - 1) + [200], finished
    for status, body, headers in results:
        if status == 503:
            assert body["error"] == "unavailable" and "overloaded" in body["message"]
            assert int(headers["retry-after"]) >= 1
    # Once the queue has drained, a request is admitted again.
    assert _clarify(overload_url, finished)[0] == 200
