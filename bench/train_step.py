"""Training throughput, side by side in one run: the hand-written loop of an earlier commit
against the TRL engine at fp32, at bf16 and with LoRA.

    python bench/train_step.py [--model DIR] [--steps 6] [--baseline-rev dc669fe] [--variants ...]

Every variant trains the same rows (the demo set, 3 retrieved passages each, max_length
256) through ``run_training`` on real local Ray Train with 2 CPU workers, for ``--steps``
optimizer steps of grounded SFT (4 rows per worker) and of the joint objective (2 pairs per
worker, gamma 0.5, beta 0.1, precomputed reference log-probs). The earlier commit's loop runs
from a ``git worktree`` of ``--baseline-rev`` (the last commit before the TRL engine) in a
subprocess. Prints one JSON object: per variant and objective, the median step time
(the first step excluded), rows/s, and the training and held-out losses after the last step;
``speedup_vs_baseline`` divides each variant's rows/s by the baseline's.

Figures that carry over between machines (:mod:`rac.machine`): ``machine`` (CPU model, cores,
bf16/AMX flags, oneDNN's bf16 support), ``peak`` (this process's matmul FLOP/s on the model's
shapes at 1,024 tokens, the LM head on the labelled share of them, per dtype the variants use,
on all of torch's threads, before and after the runs: each shape's faster rate) and, per run, ``gflops_per_s``
(6·N·tokens per step over the step time, the LM head counted on labelled tokens only, as the
training forward runs it; tokens per step: the training set's mean tokens per row or pair, a
pair's prompt counted once where it is shared, times the global batch) and
``share_of_peak`` (of the peak of the run's dtype). A variant in bf16 on a CPU without native
bf16 matmuls is not run: ``skipped`` gives the reason with the measured bf16/fp32 speed ratio.

Default model: the packaged SmolLM2-135M (``python -m jobs.prepare_model`` writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOLLM = REPO / "outputs" / "models" / "smollm2-135m-instruct"
VARIANTS = {
    "trl_fp32": {"model": {"dtype": "float32"}},
    "trl_bf16": {"model": {"dtype": "bfloat16"}},
    "trl_bf16_lora": {"model": {"dtype": "bfloat16", "lora": {"enabled": True, "r": 16, "alpha": 32}},
                      "learning_rate_scale": 10.0},
    "trl_bf16_zero2": {"model": {"dtype": "bfloat16"}, "deepspeed": {"zero_stage": 2}},
    # One worker using both cores: the same global batch, no gradient all-reduce, one optimizer step.
    "trl_bf16_1x2": {"model": {"dtype": "bfloat16"}, "scaling": {"num_workers": 1, "cpus_per_worker": 2}},
    # The same, with each pair's prompt run twice (TRL's own layout): what sharing the prompt saves.
    "trl_bf16_1x2_prompt_twice": {"model": {"dtype": "bfloat16"}, "scaling": {"num_workers": 1, "cpus_per_worker": 2},
                                  "rac": {"share_prompt": False}, "kinds": ["rac"]},
}


#: The hand-written loop of ``--baseline-rev``: fp32, ZeRO-2 (it runs each pair's prompt twice;
#: its config has no ``share_prompt`` key).
BASELINE = {"model": {"dtype": "float32"}, "deepspeed": {"zero_stage": 2}}
#: Rows (SFT) or pairs (joint objective) per worker at 2 workers, and learning rates.
BATCH = {"sft": 4, "rac": 2}
LR = {"sft": 1e-4, "rac": 2e-5}


def write_rows(root: Path) -> tuple[Path, Path]:
    """Retrieved demo rows (record schema) and T2 stand-in pairs (gold question against the
    question of another facet of the same topic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rac.data.config import DataConfig
    from rac.data.prepare import prepare_data
    from rac.data.schema import records_to_table
    from rac.retrieval import EmbeddedBM25Retriever

    loaded, corpus = prepare_data(DataConfig(split_fractions=[0.9, 0.05, 0.05]))
    EmbeddedBM25Retriever.build(corpus, root / "bm25")
    hits = EmbeddedBM25Retriever(root / "bm25").search([r["query"] for r in loaded.records], 3)
    records = [{**r, "passages": h} for r, h in zip(loaded.records, hits, strict=True)]
    (root / "retrieved").mkdir()
    pq.write_table(records_to_table(records), root / "retrieved" / "part-0.parquet")
    by_topic: dict[str, list] = {}
    for r in records:
        by_topic.setdefault(r["topic_id"], []).append(r)
    pairs = [{"id": r["id"], "query": r["query"], "passages": r["passages"], "topic_id": r["topic_id"],
              "chosen": r["question"], "rejected": group[(i + 1) % len(group)]["question"], "error": None}
             for group in by_topic.values() for i, r in enumerate(group) if len(group) > 1]
    (root / "pairs").mkdir()
    pq.write_table(pa.Table.from_pylist(pairs), root / "pairs" / "part-0.parquet")
    return root / "retrieved", root / "pairs"


def common(model: Path, steps: int) -> dict:
    # No warmup: transformers' linear warmup starts at lr 0, the earlier loop at the full rate.
    return {"model": {"path": str(model)}, "max_length": 256, "max_answer_tokens": 40, "max_steps": steps,
            "warmup_ratio": 0.0,
            "save_steps": steps, "eval_steps": steps, "eval_fraction": 0.1, "logging_steps": 1, "max_failures": 0,
            "scaling": {"num_workers": 2, "cpus_per_worker": 1}}


#: Runs in a subprocess against either tree: the config keys used here exist in both.
RUNNER = r"""
import json, sys
import ray
from rac.config import from_dict
from rac.training import RACConfig, SFTConfig, read_metrics, run_training
spec = json.loads(sys.argv[1])
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
cls = RACConfig if spec["kind"] == "rac" else SFTConfig
run_training(from_dict(cls, spec["config"]))
print("METRICS " + json.dumps(read_metrics(spec["config"]["output_dir"])))
"""


def run_variant(tree: Path, kind: str, config: dict) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps({"kind": kind, "config": config})], cwd=tree,
                          env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("METRICS ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{kind} run in {tree} failed:\n{proc.stderr[-3000:]}")
    from rac.training.engine import merge_metric_lines

    # The earlier loop wrote one line per step, eval merged; merging again changes nothing there.
    return merge_metric_lines(json.loads(lines[-1][len("METRICS "):]))


def summarise(metrics: list[dict], rows_per_step: int, step_flops: float) -> dict:
    times = [m["step_time_s"] for m in metrics if "step_time_s" in m][1:]
    step = statistics.median(times)
    last = metrics[-1]
    out = {"steps": len(metrics), "step_s": round(step, 3), "rows_per_s": round(rows_per_step / step, 3),
           "gflops_per_s": round(step_flops / step / 1e9, 2),
           "final_loss": round(last["loss"], 4), "final_eval_loss": round(last.get("eval_loss", float("nan")), 4)}
    for key in ("sft_loss", "eval_sft_loss"):
        if key in last:
            out[key] = round(last[key], 4)
    return out


def skipped_variants(names: list[str]) -> dict[str, str]:
    """The variants not to run on this CPU, each with the reason: bf16 without native bf16 matmuls."""
    from rac.models.factory import slow_bf16_reason

    reasons: dict[str, str | None] = {}
    for name in names:
        dtype = VARIANTS[name]["model"]["dtype"]
        if dtype not in reasons:
            reasons[dtype] = slow_bf16_reason(dtype, use_gpu=False)
    return {name: reasons[VARIANTS[name]["model"]["dtype"]] for name in names
            if reasons[VARIANTS[name]["model"]["dtype"]]}


def mean_step_tokens(kind: str, config: dict, share_prompt: bool) -> tuple[float, float]:
    """Mean ``(tokens, labelled tokens)`` a training step runs through the model per row (SFT) or
    pair (joint objective), over the training set ``config`` tokenizes (:func:`rac.training.data.example_tokens`)."""
    from rac.config import from_dict
    from rac.training import RACConfig, SFTConfig
    from rac.training.config import DATA_DIR
    from rac.training.data import example_tokens, load_dataset_dir
    from rac.training.trainer import build_datasets

    cfg = from_dict(RACConfig if kind == "rac" else SFTConfig, config)
    build_datasets(cfg, cfg.read_rows())
    counts = [example_tokens(e, share_prompt) for e in load_dataset_dir(Path(cfg.output_dir) / DATA_DIR / "train")]
    return statistics.mean(c[0] for c in counts), statistics.mean(c[1] for c in counts)


def kind_config(kind: str, model: Path, steps: int, name: str, variant: dict, inputs: dict[str, Path],
                tmp: Path) -> dict:
    """The run config of ``variant`` for ``kind`` (sft or rac)."""
    config = common(model, steps)
    workers = variant.get("scaling", {}).get("num_workers", 2)
    config.update(input_dir=str(inputs[kind]), output_dir=str(tmp / f"{name}-{kind}"), run_name=f"{name}-{kind}",
                  per_worker_batch_size=BATCH[kind] * 2 // workers,
                  learning_rate=LR[kind] * variant.get("learning_rate_scale", 1.0))
    config["model"].update(variant["model"])
    for section in ("deepspeed", "scaling"):
        if section in variant:
            config[section] = variant[section]
    if kind == "rac":
        config.update(gamma=0.5, beta=0.1, precompute_ref_logps=True, **variant.get("rac", {}))
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SMOLLM)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--baseline-rev", default="dc669fe", help="Commit of the hand-written loop ('' skips it).")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--kinds", nargs="*", default=["sft", "rac"], choices=["sft", "rac"])
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if not (args.model / "config.json").is_file():
        sys.exit(f"no model in {args.model}: run `python -m jobs.prepare_model` first")
    from transformers import AutoConfig

    from rac.machine import (
        PEAK_TOKENS,
        describe_machine,
        matmul_params,
        matmul_peak,
        matmul_shapes,
        share_of_peak,
        training_step_flops,
    )

    skipped = skipped_variants(args.variants)
    variants = [name for name in args.variants if name not in skipped]
    model_config = AutoConfig.from_pretrained(str(args.model))
    n_params = matmul_params(model_config)
    dtypes = sorted({VARIANTS[name]["model"]["dtype"] for name in variants}
                    | ({BASELINE["model"]["dtype"]} if args.baseline_rev else set()))
    result: dict = {"model": str(args.model), "matmul_params": n_params, "steps": args.steps,
                    "machine": describe_machine(), "skipped": skipped, "runs": {}}
    print("machine", json.dumps(result["machine"]), "skipped", json.dumps(skipped), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        retrieved, pairs = write_rows(tmp)
        inputs = {"sft": retrieved, "rac": pairs}
        tokens = {(kind, shared): mean_step_tokens(kind, kind_config(kind, args.model, args.steps, "tokens",
                                                                       VARIANTS["trl_fp32"], inputs, tmp), shared)
                  for kind in args.kinds for shared in ((True, False) if kind == "rac" else (True,))}
        result["mean_tokens_per_row"] = {f"{kind}{'' if shared else '_prompt_twice'}": {
            "tokens": round(t[0], 1), "labelled": round(t[1], 1)} for (kind, shared), t in tokens.items()}
        # The LM head runs on labelled tokens only: the peak's head matmul has as few rows.
        labelled = sum(t[1] for t in tokens.values()) / sum(t[0] for t in tokens.values())
        shapes = matmul_shapes(model_config, PEAK_TOKENS, head_tokens=round(PEAK_TOKENS * labelled))
        peaks = result["peak"] = {dtype: matmul_peak(shapes, dtype) for dtype in dtypes}
        trees = {name: REPO for name in variants}
        if args.baseline_rev:
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tmp / "baseline"),
                            args.baseline_rev], check=True, capture_output=True)
            trees = {"baseline_loop_fp32": tmp / "baseline", **trees}
        try:
            for name, tree in trees.items():
                variant = VARIANTS.get(name, BASELINE)
                for kind in [k for k in args.kinds if k in variant.get("kinds", args.kinds)]:
                    config = kind_config(kind, args.model, args.steps, name, variant, inputs, tmp)
                    metrics = run_variant(tree, kind, config)
                    shared = kind == "sft" or config.get("share_prompt", name != "baseline_loop_fp32")
                    row_tokens, row_labelled = tokens[(kind, shared)]
                    step_flops = training_step_flops(model_config, row_tokens * 2 * BATCH[kind],
                                                     row_labelled * 2 * BATCH[kind])
                    result["runs"].setdefault(name, {})[kind] = summarise(metrics, 2 * BATCH[kind], step_flops)
                    print(name, kind, json.dumps(result["runs"][name][kind]), file=sys.stderr, flush=True)
        finally:
            if args.baseline_rev:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tmp / "baseline")],
                               capture_output=True)
    # Measured again after the runs: each shape keeps its faster rate (rac.machine.matmul_peak).
    peaks.update({dtype: matmul_peak(shapes, dtype, earlier=before) for dtype, before in peaks.items()})
    for name, runs in result["runs"].items():
        for run in runs.values():
            peak = peaks[VARIANTS.get(name, BASELINE)["model"]["dtype"]]
            run["share_of_peak"] = round(share_of_peak(run["gflops_per_s"] * 1e9, peak), 4)
    base = result["runs"].get("baseline_loop_fp32")
    if base:
        result["speedup_vs_baseline"] = {
            name: {kind: round(r[kind]["rows_per_s"] / base[kind]["rows_per_s"], 2) for kind in r if kind in base}
            for name, r in result["runs"].items() if name != "baseline_loop_fp32"}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
