"""Serving throughput and latency with batching on and off, measured in one run.

    python bench/serve_load.py [--model DIR] [--duration 15] [--concurrency 1 8 32] [--batch-sizes 1 16]
    python bench/serve_load.py --detector outputs/demo/train_detector/model --batch-sizes 1 --concurrency 1

Deploys ``serve.app:build_app`` on a local Ray instance (127.0.0.1, a free port) with the
embedded BM25 index of the demo corpus, then drives ``POST /v1/clarify`` in a closed loop:
``c`` clients each send one request, wait for the answer, and send the next, for
``--duration`` seconds, at each concurrency ``c``. The application is deployed once per
generator ``max_batch_size`` (1 = batching off), side by side on their own routes, and the
measurements alternate between them at each concurrency.

Prints one JSON object: per (max_batch_size, concurrency) requests/s, p50 and p99 latency
in ms, errors, and the generator's mean batch size over the window (``GET /v1/stats``);
then ``speedup`` (requests/s with the largest batch size over batch size 1) and
``p99_ratio`` (its p99 over batch size 1's) per concurrency. Target at concurrency 32:
speedup >= 3 with p99_ratio <= 1.

The default model is a randomly initialised llama (hidden 128, 8 layers, tokenizer trained
on the demo data; ``--hidden``, ``--layers``) and each request retrieves one passage and
generates 32 tokens, so that token-by-token decoding, not HTTP, dominates a request (about
0.7 s of generation against about 0.1 s through proxy, ingress and retrieval here).
Decoding is what batching speeds up: a step's cost is mostly per-layer overhead, nearly the
same for 16 rows as for one, as on a GPU. The prompt's prefill is compute-bound on a CPU and
gains little, so wide models (hidden 256 and up) and long prompts (``--top-k``) shrink the
gain. ``--model`` takes any exported model directory, e.g. ``outputs/models/smollm2-135m-instruct``.

``--burst N`` measures overload instead: every batch size is deployed twice, with load
shedding on and off (``ingress.shed_load``), with ``--generation-timeout-s`` as the
deadline (``--batch-delay-s`` makes every generator batch that much slower, to stand for
a bigger model or busier cores). Each is sent ``N`` requests at once, ``--bursts`` times
after one warm-up burst (which gives the ingress its first measurement; reported as
``cold``), and the JSON holds, per variant, the count of each status and the latency of
each status (p50 and max, ms): with shedding the requests the queue cannot finish in time
get 503 at once, without it they get 504 at the timeout.

``--detector DIR`` deploys every batch size twice, without and with the unsupported-span
detector (``detector.path``, precision ``--detector-precision``), and adds
``detector_added_p50_ms`` per (batch size, concurrency): p50 with it minus p50 without it
(target at batch size 1, concurrency 1: at most 20 ms). ``--top-k`` sets the passages the
detector reads as well as the prompt's.

Every request sent before the deadline is waited for and counted; requests/s is divided by
the time to the last answer. Both choices are conservative for batching: the drain runs
with ever smaller batches, and the first wave's short waits lower the unbatched latencies.
Figures from a shared machine are noisy: the load average is recorded beside each point, and
the machine (:func:`rac.machine.describe_machine`) beside the figures. A bf16 detector on a CPU
without native bf16 matmuls is not deployed: ``skipped`` says why.
Progress and Ray's messages go to stderr; stdout holds only the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


async def closed_loop(url: str, queries: list[str], concurrency: int, duration: float,
                      max_new_tokens: int) -> dict[str, Any]:
    """``concurrency`` clients, each one request at a time, for ``duration`` seconds."""
    try:
        import aiohttp
    except ImportError as e:  # pragma: no cover - a dependency of ray[serve]
        raise ImportError("the load generator needs aiohttp: pip install aiohttp") from e

    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.perf_counter() + duration

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        n = i
        while time.perf_counter() < deadline:
            body = {"query": queries[n % len(queries)], "max_new_tokens": max_new_tokens}
            n += concurrency
            t0 = time.perf_counter()
            try:
                async with session.post(url, json=body) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(i, session) for i in range(concurrency)))
    # Requests in flight at the deadline finish and count: closed loop, wall time to the last answer.
    elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(1000 * percentile(latencies, 0.50), 1),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1), "errors": errors}


async def burst(url: str, queries: list[str], n: int, max_new_tokens: int) -> dict[str, Any]:
    """``n`` requests sent at once: per status, the count and the latency (p50, max; ms)."""
    import aiohttp

    async def one(i: int, session: aiohttp.ClientSession) -> tuple[str, float]:
        t0 = time.perf_counter()
        try:
            async with session.post(url, json={"query": queries[i % len(queries)],
                                               "max_new_tokens": max_new_tokens}) as resp:
                await resp.read()
                status = str(resp.status)
        except (aiohttp.ClientError, TimeoutError) as e:
            status = type(e).__name__
        return status, time.perf_counter() - t0

    connector = aiohttp.TCPConnector(limit=n)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        answers = await asyncio.gather(*(one(i, session) for i in range(n)))
    by_status: dict[str, list[float]] = {}
    for status, seconds in answers:
        by_status.setdefault(status, []).append(seconds)
    return {status: {"count": len(v), "p50_ms": round(1000 * percentile(v, 0.5), 1),
                     "max_ms": round(1000 * max(v), 1)} for status, v in sorted(by_status.items())}


def get_json(url: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def app_args(model: str, index_dir: str, batch_size: int, args: argparse.Namespace,
             detector: bool = False, shed_load: bool = True) -> dict[str, Any]:
    return {
        "detector": {"path": str(Path(args.detector).resolve()) if detector else None,
                     "precision": args.detector_precision},
        "model_path": model,
        "retriever": {"index_dir": index_dir, "top_k": args.top_k},
        "generator": {
            "max_batch_size": batch_size, "batch_wait_timeout_s": args.batch_wait_timeout_s,
            "max_new_tokens": args.max_new_tokens, "torch_threads": args.torch_threads,
            "test_delay_s": args.batch_delay_s,
            # Logical CPUs only (both variants are deployed side by side); torch_threads sets the real use.
            "deployment": {"num_cpus": 0.5, "max_ongoing_requests": max(2, 2 * batch_size), "max_queued_requests": -1,
                           "autoscaling": {"min_replicas": 1, "max_replicas": 1}}},
        "ingress": {"generation_timeout_s": args.generation_timeout_s, "shed_load": shed_load, "deployment": {
            "num_cpus": 0.25, "max_ongoing_requests": 256, "autoscaling": {"min_replicas": 1, "max_replicas": 1}}},
        "limits": {"max_new_tokens": max(64, args.max_new_tokens), "max_top_k": max(20, args.top_k)},
        "auth": {"api_key_env": "RAC_BENCH_NO_KEY"},
    }


def overload(args: argparse.Namespace, base: str, model: str, index_dir: str, queries: list[str]) -> dict[str, Any]:
    """``--burst``: every batch size with shedding on and off, ``args.burst`` requests at once."""
    from ray import serve

    from serve.app import build_app

    variants = [(bs, shed) for bs in args.batch_sizes for shed in (True, False)]
    route = {v: f"/bs{v[0]}-" + ("shed" if v[1] else "noshed") for v in variants}
    serve.run_many([serve.RunTarget(build_app(app_args(model, index_dir, bs, args, shed_load=shed)),
                                    name="bench" + route[(bs, shed)].replace("/", "-"), route_prefix=route[(bs, shed)])
                    for bs, shed in variants])
    cold: dict[str, Any] = {}
    for v in variants:
        cold[route[v].lstrip("/")] = asyncio.run(burst(f"{base}{route[v]}/v1/clarify", queries, args.burst,
                                                       args.max_new_tokens))
        print(json.dumps({"cold": route[v], **cold[route[v].lstrip("/")]}), file=sys.stderr)
    measured: dict[str, list[Any]] = {route[v].lstrip("/"): [] for v in variants}
    for _ in range(args.bursts):
        for v in variants:  # alternate, so a load change hits every variant alike
            point = asyncio.run(burst(f"{base}{route[v]}/v1/clarify", queries, args.burst, args.max_new_tokens))
            point["load_average_1m"] = round(os.getloadavg()[0], 2)
            print(json.dumps({"variant": route[v], **point}), file=sys.stderr)
            measured[route[v].lstrip("/")].append(point)
    return {"burst": args.burst, "generation_timeout_s": args.generation_timeout_s,
            "batch_delay_s": args.batch_delay_s, "cold": cold, "bursts": measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="Model directory (default: a tiny random llama, --hidden, --layers).")
    parser.add_argument("--hidden", type=int, default=128, help="Hidden size of the default tiny model.")
    parser.add_argument("--layers", type=int, default=8, help="Layers of the default tiny model.")
    parser.add_argument("--duration", type=float, default=15.0, help="Seconds of load per point.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16],
                        help="Generator max_batch_size values (1 = batching off).")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=1, help="Passages per prompt.")
    parser.add_argument("--batch-wait-timeout-s", type=float, default=0.02)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads of the generator (1 avoids oversubscribing a shared 2-core machine).")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance.")
    parser.add_argument("--detector", help="Exported unsupported-span detector: measure every point without and "
                                           "with it (jobs.train_detector's <output_dir>/model).")
    parser.add_argument("--detector-precision", default="int8", choices=["float32", "bfloat16", "int8"])
    parser.add_argument("--burst", type=int, help="Measure overload: this many requests at once, with load shedding "
                                                  "on and off, instead of the closed loop.")
    parser.add_argument("--bursts", type=int, default=2, help="Bursts measured per variant after the warm-up one.")
    parser.add_argument("--generation-timeout-s", type=float, default=300.0,
                        help="ingress.generation_timeout_s: the deadline shedding keeps to.")
    parser.add_argument("--batch-delay-s", type=float, default=0.0,
                        help="Seconds added to every generator batch (generator.test_delay_s).")
    args = parser.parse_args()
    # Libraries print to stdout (DeepSpeed's accelerator notice, Ray's forwarded messages,
    # blank lines from native code); keep stdout for the JSON alone, at the descriptor level.
    sys.stdout.flush()
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    import ray
    from ray import serve

    from rac.data import build_corpus, load_data
    from rac.machine import describe_machine
    from rac.models.factory import slow_bf16_reason
    from rac.retrieval import EmbeddedBM25Retriever
    from rac.testing.es_server import free_port
    from serve.app import build_app

    machine = describe_machine()
    skipped = {}
    if args.detector and (reason := slow_bf16_reason(args.detector_precision, use_gpu=False)):
        skipped["detector"] = f"--detector-precision {reason}"
        args.detector = None
        print(f"skipping the detector: {skipped['detector']}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="rac-serve-bench-"))
    if args.model:
        model, model_name = str(Path(args.model).resolve()), Path(args.model).name
    else:
        from rac.testing.tiny import save_tiny_model

        model = str(save_tiny_model(work / "tiny-llama", hidden=args.hidden, layers=args.layers, heads=4))
        model_name = f"tiny llama (hidden {args.hidden}, {args.layers} layers, random weights)"
    index_dir = str(EmbeddedBM25Retriever.build(build_corpus(load_data("demo").documents), work / "index"))
    queries = sorted({r["query"] for r in load_data("demo").records})

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    results = []
    if args.burst:
        try:
            report = overload(args, base, model, index_dir, queries)
        finally:
            serve.shutdown()
            ray.shutdown()
        print(json.dumps({"model": model_name, "max_new_tokens": args.max_new_tokens, "top_k": args.top_k,
                          "machine": {**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
                          **report}, indent=2), file=json_out)
        return
    try:
        # Every batch size is deployed at once (its own route) and the points alternate
        # between them, so a load change on the shared machine hits both sides alike rather
        # than whichever happened to run second.
        variants = [(bs, det) for bs in args.batch_sizes for det in ((False, True) if args.detector else (False,))]
        route = {v: f"/bs{v[0]}" + ("-detector" if v[1] else "") for v in variants}
        serve.run_many([serve.RunTarget(build_app(app_args(model, index_dir, bs, args, det)),
                                        name="bench" + route[(bs, det)].replace("/", "-"),
                                        route_prefix=route[(bs, det)])
                        for bs, det in variants])
        for v in variants:
            # Warm-up: first calls pay for lazy initialisation in the proxy, ingress and model.
            asyncio.run(closed_loop(f"{base}{route[v]}/v1/clarify", queries, 4, 3.0, args.max_new_tokens))
        for concurrency in args.concurrency:
            for bs, det in variants:
                app = f"{base}{route[(bs, det)]}"
                before = get_json(f"{app}/v1/stats")
                point = asyncio.run(closed_loop(f"{app}/v1/clarify", queries, concurrency, args.duration,
                                                args.max_new_tokens))
                after = get_json(f"{app}/v1/stats")
                batches = after["batches"] - before["batches"]
                point.update(max_batch_size=bs, concurrency=concurrency, detector=det,
                             mean_batch_size=round((after["requests"] - before["requests"]) / batches, 2)
                             if batches else 0.0,
                             load_average_1m=round(os.getloadavg()[0], 2))
                print(json.dumps(point), file=sys.stderr)
                results.append(point)
    finally:
        serve.shutdown()
        ray.shutdown()

    by_key = {(r["max_batch_size"], r["concurrency"]): r for r in results if not r["detector"]}
    with_detector = {(r["max_batch_size"], r["concurrency"]): r for r in results if r["detector"]}
    detector_added = {f"bs{bs}_c{c}": round(r["p50_ms"] - by_key[(bs, c)]["p50_ms"], 1)
                      for (bs, c), r in with_detector.items() if (bs, c) in by_key}
    base_bs, best_bs = min(args.batch_sizes), max(args.batch_sizes)
    comparison = {}
    for c in args.concurrency:
        off, on = by_key.get((base_bs, c)), by_key.get((best_bs, c))
        if off and on and off["requests_per_s"] and off["p99_ms"]:
            comparison[str(c)] = {"speedup": round(on["requests_per_s"] / off["requests_per_s"], 2),
                                  "p99_ratio": round(on["p99_ms"] / off["p99_ms"], 2)}
    print(json.dumps({
        "model": model_name, "max_new_tokens": args.max_new_tokens, "top_k": args.top_k, "duration_s": args.duration,
        "batch_wait_timeout_s": args.batch_wait_timeout_s, "torch_threads": args.torch_threads,
        "machine": {**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "skipped": skipped,
        "results": results,
        f"batching_{best_bs}_vs_{base_bs}": comparison,
        **({"detector": args.detector, "detector_precision": args.detector_precision,
            "detector_added_p50_ms": detector_added} if args.detector else {}),
    }, indent=2), file=json_out)


if __name__ == "__main__":
    main()
