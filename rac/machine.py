"""The machine a figure was measured on, and that machine's own matmul peak.

Throughput differs between CPUs by more than the changes we measure: a bf16 matmul ran at
231 GFLOP/s a thread on a CPU with AVX512-BF16 and at 0.6 GFLOP/s on one without. A
benchmark therefore records :func:`describe_machine` beside its figures and reports its
FLOP/s as a share of :func:`matmul_peak`, measured in the same process on the matmul shapes
of the model under test: the share carries over between machines, rows/s does not.

FLOP accounting (Kaplan et al., 2020, "Scaling Laws for Neural Language Models", sec. 2.1):
a forward costs 2·N FLOPs per token (:func:`forward_flops`), a training step 6·N per token
(:func:`training_flops`: the backward pass costs twice the forward). N counts the weights
that multiply activations (:func:`matmul_params`: the LM head included, the input embedding
lookup, norms and biases not); the training forward runs the LM head on labelled tokens only,
so a step counts the head for those alone (:func:`training_step_flops`). Attention's
sequence-squared terms are left out, as are the frozen weights' skipped gradients under LoRA.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

#: CPU flags that decide matmul speed per dtype (``/proc/cpuinfo`` names).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")

#: Tokens per matmul when a peak is measured: a training micro-batch or a batched prefill
#: (4 rows of 256 tokens). Fewer rows make smaller, slower matmuls: a lower peak.
PEAK_TOKENS = 1024


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` ({} where there is none)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return {}
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def bf16_supported() -> bool:
    """Whether this CPU runs bf16 matmuls natively (oneDNN finds AVX512-BF16 or AMX).

    Without it torch still computes in bf16, by emulation, about 70x slower than fp32 on
    the build machine that lacked it.
    """
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def describe_machine() -> dict[str, Any]:
    """What a benchmark figure depends on: CPU model, cores, the flags of :data:`CPU_FLAGS`,
    oneDNN's bf16 support, torch's threads and versions, and the load when it was read."""
    import torch

    flags = set(_cpuinfo().get("flags", "").split())
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "cpu_flags": {name: name in flags for name in CPU_FLAGS},
            "mkldnn_bf16_supported": bf16_supported(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average_1m": round(os.getloadavg()[0], 2)}


def matmul_shapes(config: Any, tokens: int = PEAK_TOKENS, head_tokens: int | None = None) -> list[dict[str, int]]:
    """The matmuls of one forward of a decoder-only transformer over ``tokens`` tokens:
    ``{m, k, n, count}`` each, an ``(m x k) @ (k x n)`` product done ``count`` times.

    ``head_tokens``: the tokens the LM head runs on, where fewer (the training forward runs it
    on labelled tokens only); default ``tokens``. ``config`` is a Hugging Face model config of
    the Llama family (attention q/k/v/o, a gated MLP, an LM head); sizes missing from it take
    that family's defaults.
    """
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    inter = getattr(config, "intermediate_size", None) or 4 * hidden
    layers = config.num_hidden_layers
    head_m = tokens if head_tokens is None else head_tokens
    # q, k, v, o; gate, up, down; then the LM head once. Equal shapes add up.
    products = [((tokens, hidden, heads * head_dim), layers), ((tokens, hidden, kv), 2 * layers),
                ((tokens, heads * head_dim, hidden), layers), ((tokens, hidden, inter), 2 * layers),
                ((tokens, inter, hidden), layers), ((head_m, hidden, config.vocab_size), 1)]
    counts: dict[tuple[int, int, int], int] = {}
    for mkn, c in products:
        counts[mkn] = counts.get(mkn, 0) + c
    return [{"m": m, "k": k, "n": n, "count": c} for (m, k, n), c in counts.items()]


def matmul_params(config: Any) -> int:
    """N of the FLOP accounting: the weights of :func:`matmul_shapes` (LM head included,
    input embedding, norms and biases not)."""
    return sum(s["k"] * s["n"] * s["count"] for s in matmul_shapes(config, 1))


def forward_flops(n_params: int, tokens: float) -> float:
    """FLOPs of a forward over ``tokens`` tokens: 2·N·tokens."""
    return 2.0 * n_params * tokens


def training_flops(n_params: int, tokens: float) -> float:
    """FLOPs of a training step over ``tokens`` tokens (forward and backward): 6·N·tokens."""
    return 6.0 * n_params * tokens


def lm_head_params(config: Any) -> int:
    """The LM head's share of :func:`matmul_params` (hidden x vocabulary)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return config.hidden_size * config.vocab_size


def training_step_flops(config: Any, tokens: float, labelled_tokens: float | None = None) -> float:
    """6·N·tokens of a step of the model of ``config``; where the LM head runs on the
    ``labelled_tokens`` only (:mod:`rac.training.forward`), its weights count for those."""
    head = lm_head_params(config)
    labelled = tokens if labelled_tokens is None else labelled_tokens
    return training_flops(matmul_params(config) - head, tokens) + training_flops(head, labelled)


def matmul_flops_per_s(m: int, k: int, n: int, dtype: str = "float32", min_time_s: float = 0.2) -> float:
    """FLOP/s of ``(m x k) @ (k x n)`` in ``dtype`` on torch's threads: one warm-up call, then
    calls until ``min_time_s`` has passed (at least two); the fastest call counts, the one
    least disturbed by other work on a shared machine."""
    import torch

    torch_dtype = getattr(torch, dtype)
    a, b = torch.randn(m, k).to(torch_dtype), torch.randn(k, n).to(torch_dtype)
    torch.matmul(a, b)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 2 or time.perf_counter() - start < min_time_s:
        t = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t)
    return 2.0 * m * k * n / min(times)


def matmul_peak(shapes: list[dict[str, int]], dtype: str = "float32", min_time_s: float = 0.2,
                earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """The matmul peak of a model on this machine, in ``dtype``: each of ``shapes``
    (:func:`matmul_shapes`) timed alone, and ``flops_per_s``, their rate weighted by the FLOPs
    each does in one forward (the model's matmuls back to back, nothing else).

    ``earlier``: a peak of the same shapes measured before (say, before the benchmark, this one
    after it); each shape keeps its faster rate, so that other work on a shared machine at
    either moment lowers the peak less.

    Never call it for bf16 where :func:`bf16_supported` is False: an LM head's matmul takes
    tens of seconds there (:func:`bf16_speed_ratio` is the cheap probe).
    """
    import torch

    rates = [matmul_flops_per_s(s["m"], s["k"], s["n"], dtype, min_time_s) for s in shapes]
    if earlier is not None:
        rates = [max(r, e["flops_per_s"]) for r, e in zip(rates, earlier["shapes"], strict=True)]
    work = [2.0 * s["m"] * s["k"] * s["n"] * s["count"] for s in shapes]
    mixed = sum(work) / sum(w / r for w, r in zip(work, rates, strict=True))
    return {"dtype": dtype, "flops_per_s": mixed, "gflops_per_s": round(mixed / 1e9, 2),
            "threads": torch.get_num_threads(), "measurements": 1 + (earlier or {}).get("measurements", 0),
            "shapes": [{**s, "flops_per_s": r, "gflops_per_s": round(r / 1e9, 2)}
                       for s, r in zip(shapes, rates, strict=True)]}


def bf16_speed_ratio(size: int = 256, min_time_s: float = 0.1) -> float:
    """bf16 matmul speed over fp32 on one thread and a ``size``-cube matmul: a probe small
    enough for a CPU that emulates bf16 (about 0.2 s there). One thread, because a second
    one is the first to be taken by other work on a small machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fp32 = matmul_flops_per_s(size, size, size, "float32", min_time_s)
        return matmul_flops_per_s(size, size, size, "bfloat16", min_time_s) / fp32
    finally:
        torch.set_num_threads(threads)


def share_of_peak(flops_per_s: float, peak: dict[str, Any]) -> float:
    """``flops_per_s`` as a share of ``peak`` (:func:`matmul_peak`)."""
    return flops_per_s / peak["flops_per_s"]
