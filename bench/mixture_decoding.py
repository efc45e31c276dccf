"""Mixture decoding throughput, measured side by side in one run on the same models, prompts and lengths.

    python bench/mixture_decoding.py [--model outputs/models/smollm2-135m-instruct] [--new-tokens 32]

Without ``--model`` both models are random tiny llamas (hidden 256, 4 layers, a BPE
vocabulary of 4096 trained on the demo set): at batch 16 their forward passes dominate;
at batch 1 framework overhead per forward is a large share, as it is for any small model
on CPU. With ``--model`` the same model plays both roles, which costs what two different
models of its size cost. Prompts are demo queries with five passages within 512 tokens
(the retriever's and the stage's defaults) and the ungrounded prompts of the same queries.

Prints one JSON object; for batch 1 and batch 16, generated tokens/s of
- ``mixture``: :class:`rac.decoding.MixtureDecoder` (alpha 0.5, two models, two KV caches);
- ``hf_generate``: Hugging Face ``generate`` with the grounded model alone (same sampling);
- ``recompute``: the mixture without a cache, both models re-reading the whole sequence
  at every step (the naive way);
and ``vs_generate`` = mixture / hf_generate (target >= 0.45: two models cost two forwards
per token) and ``vs_recompute`` = mixture / recompute (target >= 5). Every run generates
exactly ``--new-tokens`` per row (end of sequence and '?' do not stop it), so all three
do the same work. Times are the best of interleaved runs (wall clock); ``cpu_time_ratios``
compare process CPU time instead, which other work on a shared machine disturbs less
(use ``--threads 1`` for that).

Each method's ``gflops_per_s`` counts its useful work, 2·N FLOPs per prompt and generated
token of each model it runs (:mod:`rac.machine`), and ``share_of_peak`` divides it by ``peak``,
this process's fp32 matmul rate on the model's shapes at 1,024 tokens: a one-row decoding step
multiplies one token, far from that rate, which is why the share is low at batch 1.

Peak memory (``peak_extra_rss_mib``): the process's peak resident set during a run (VmHWM,
reset before each run, after returning freed memory to the system) minus the resident set
before it, in MiB: what the run allocates on top of the loaded models.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rac.data import load_data  # noqa: E402
from rac.decoding import MixtureDecoder, SamplingParams  # noqa: E402
from rac.decoding.mixture import sample_from_logits  # noqa: E402
from rac.machine import (  # noqa: E402
    describe_machine,
    forward_flops,
    matmul_params,
    matmul_peak,
    matmul_shapes,
    share_of_peak,
)
from rac.models import build_prompt, load_tokenizer  # noqa: E402
from rac.testing.tiny import demo_texts, tiny_causal_lm, train_tiny_tokenizer  # noqa: E402

ALPHA, TEMPERATURE, TOP_K = 0.5, 0.7, 50


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0); False where not allowed.

    Memory the allocator freed but kept would hide the next run's allocations, so it is
    handed back to the system first (glibc ``malloc_trim``).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load_models(model: str | None, hidden: int, layers: int) -> tuple[Any, Any, Any, str]:
    if model and Path(model, "config.json").is_file():
        from transformers import AutoModelForCausalLM

        tok = load_tokenizer(model)
        m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        return m, m, tok, f"{model} (as both models)"
    tok = train_tiny_tokenizer(demo_texts(), vocab_size=4096)
    grounded = tiny_causal_lm(tok, layers=layers, hidden=hidden, heads=4, seed=1)
    ungrounded = tiny_causal_lm(tok, layers=layers, hidden=hidden, heads=4, seed=2)
    n = sum(p.numel() for p in grounded.parameters())
    name = f"tiny llama, hidden {hidden}, {layers} layers, vocab {len(tok)}, {n / 1e6:.1f}M params"
    return grounded, ungrounded, tok, name


def make_prompts(tok: Any, n: int, max_prompt_tokens: int) -> tuple[list[str], list[str]]:
    data = load_data("demo")
    docs = [d["text"] for d in data.documents]
    records = [data.records[i % len(data.records)] for i in range(n)]
    # Five passages (the retriever's default top_k) within the stage's default prompt budget.
    grounded = [build_prompt(tok, r["query"], docs[i % 20: i % 20 + 5], grounded=True,
                             max_tokens=max_prompt_tokens).text for i, r in enumerate(records)]
    ungrounded = [build_prompt(tok, r["query"], grounded=False).text for r in records]
    return grounded, ungrounded


@torch.inference_mode()
def recompute(grounded_model: Any, ungrounded_model: Any, tok: Any, grounded: list[str], ungrounded: list[str],
              seeds: list[int], new_tokens: int) -> None:
    """The mixture without a KV cache: both models re-read prompt + generated tokens every step."""
    tok.padding_side = "left"
    enc_g = tok(grounded, return_tensors="pt", padding=True)
    enc_u = tok(ungrounded, return_tensors="pt", padding=True)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    generated = torch.empty((len(seeds), 0), dtype=torch.long)
    for _ in range(new_tokens):
        logits = []
        for model, enc in ((grounded_model, enc_g), (ungrounded_model, enc_u)):
            ids = torch.cat([enc["input_ids"], generated], dim=1)
            mask = torch.cat([enc["attention_mask"], torch.ones_like(generated)], dim=1)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
            logits.append(out.logits[:, -1].float())
        u = torch.stack([torch.rand(2, generator=g, dtype=torch.float64) for g in gens])
        mixed = torch.where((u[:, 0] < ALPHA).unsqueeze(-1), logits[1], logits[0])
        nxt = sample_from_logits(mixed, u[:, 1], TEMPERATURE, TOP_K)
        generated = torch.cat([generated, nxt.unsqueeze(-1)], dim=1)


@torch.inference_mode()
def hf_generate(model: Any, tok: Any, prompts: list[str], new_tokens: int) -> None:
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, do_sample=True, temperature=TEMPERATURE, top_k=TOP_K, max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == enc["input_ids"].shape[1] + new_tokens


def measure(methods: dict[str, Any], rows: int, new_tokens: int, repeats: dict[str, int],
            warm_up: tuple[str, ...]) -> dict[str, Any]:
    """Time the methods interleaved (A, B, C, A, B, C, ...) and keep each one's best run.

    On a shared machine other work comes and goes; interleaving exposes every method to the
    same conditions, and the best of several runs is the least disturbed one.
    """
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu_times: dict[str, list[float]] = {name: [] for name in methods}
    peaks: dict[str, list[float]] = {name: [] for name in methods}
    for name in warm_up:
        methods[name]()  # first-call allocations and lazy initialisation are not what we compare
    for r in range(max(repeats.values())):
        for name, fn in methods.items():
            if r >= repeats[name]:
                continue
            reset_peak()
            before = rss_kib("VmRSS")
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
            peaks[name].append((rss_kib("VmHWM") - before) / 1024)
    return {name: {"tokens_per_s": round(rows * new_tokens / min(ts), 1), "best_seconds": round(min(ts), 3),
                   "median_seconds": round(statistics.median(ts), 3), "runs": len(ts),
                   "tokens_per_cpu_s": round(rows * new_tokens / min(cpu_times[name]), 1),
                   "peak_extra_rss_mib": round(max(peaks[name]), 1)} for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="A local model directory to use as both models, e.g. outputs/models/smollm2-135m-instruct "
                         "(default: two tiny llamas).")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--max-prompt-tokens", type=int, default=512, help="As NegativesConfig.max_prompt_tokens.")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    grounded_model, ungrounded_model, tok, model_name = load_models(args.model, args.hidden, args.layers)
    load_before = os.getloadavg()
    params = SamplingParams(alpha=ALPHA, temperature=TEMPERATURE, top_k=TOP_K, max_new_tokens=args.new_tokens,
                            stop_at_question=False, ignore_eos=True)
    decoder = MixtureDecoder(grounded_model, ungrounded_model, tok, params)
    machine = describe_machine()
    peak = matmul_peak(matmul_shapes(grounded_model.config))
    n_params = matmul_params(grounded_model.config)
    results: dict[str, Any] = {}
    for bs in args.batch_sizes:
        grounded, ungrounded = make_prompts(tok, bs, args.max_prompt_tokens)
        seeds = list(range(bs))
        lengths = [len(tok(p)["input_ids"]) for p in grounded], [len(tok(p)["input_ids"]) for p in ungrounded]
        methods = {
            "mixture": lambda g=grounded, u=ungrounded, s=seeds: decoder.generate(g, u, s),
            "hf_generate": lambda g=grounded: hf_generate(grounded_model, tok, g, args.new_tokens),
            "recompute": lambda g=grounded, u=ungrounded, s=seeds: recompute(
                grounded_model, ungrounded_model, tok, g, u, s, args.new_tokens),
        }
        # The naive loop is slow and its time varies little in relative terms: fewer runs.
        repeats = {"mixture": args.repeats, "hf_generate": args.repeats, "recompute": 1 if bs > 4 else 2}
        # The models are warm after the first two; the naive loop needs no warm-up of its own.
        runs = measure(methods, bs, args.new_tokens, repeats, warm_up=("mixture", "hf_generate"))
        # Useful work per row, 2·N per token (prompt and new tokens): the mixture runs both
        # models, generate the grounded one; recomputing does the mixture's work and more.
        tokens = {"grounded": statistics.mean(lengths[0]) + args.new_tokens,
                  "ungrounded": statistics.mean(lengths[1]) + args.new_tokens}
        both = forward_flops(n_params, tokens["grounded"]) + forward_flops(n_params, tokens["ungrounded"])
        row_flops = {"mixture": both, "hf_generate": forward_flops(n_params, tokens["grounded"]), "recompute": both}
        for name, run in runs.items():
            flops_per_s = bs * row_flops[name] / run["best_seconds"]
            run["flops_per_s"] = flops_per_s
        mix = runs["mixture"]["tokens_per_s"]
        results[f"batch_{bs}"] = {
            **runs,
            "vs_generate": round(mix / runs["hf_generate"]["tokens_per_s"], 3),
            "vs_recompute": round(mix / runs["recompute"]["tokens_per_s"], 2),
            "cpu_time_ratios": {
                "vs_generate": round(runs["mixture"]["tokens_per_cpu_s"] / runs["hf_generate"]["tokens_per_cpu_s"], 3),
                "vs_recompute": round(runs["mixture"]["tokens_per_cpu_s"] / runs["recompute"]["tokens_per_cpu_s"], 2)},
            "prompt_tokens": {"grounded_mean": round(statistics.mean(lengths[0]), 1),
                              "ungrounded_mean": round(statistics.mean(lengths[1]), 1)},
        }
    # Measured again after the runs: each shape keeps its faster rate (:func:`matmul_peak`).
    peak = matmul_peak(matmul_shapes(grounded_model.config), earlier=peak)
    for run in (r for batch in results.values() for r in batch.values() if isinstance(r, dict) and "flops_per_s" in r):
        flops_per_s = run.pop("flops_per_s")
        run.update(gflops_per_s=round(flops_per_s / 1e9, 2), share_of_peak=round(share_of_peak(flops_per_s, peak), 4))
    print(json.dumps({
        "model": model_name, "new_tokens_per_row": args.new_tokens,
        "sampling": {"alpha": ALPHA, "temperature": TEMPERATURE, "top_k": TOP_K},
        "results": results,
        "targets": {"vs_generate": ">= 0.45", "vs_recompute": ">= 5"},
        "matmul_params": n_params, "peak": peak,
        "machine": {**machine,
                    "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                    "peak_memory_measured": reset_peak()},
    }, indent=2))


if __name__ == "__main__":
    main()
