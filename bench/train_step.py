"""Training step cost, measured side by side in one run on the same model and batch.

    python bench/train_step.py [--model DIR] [--batch 4] [--repeats 5] [--skip-workers]

Prints one JSON object:
- ``step_s``: seconds per optimizer step (forward, backward, AdamW step; median of
  ``--repeats``) for SFT alone, DPO alone and the joint objective, each with precomputed
  reference log-probs and with a reference forward every step;
- ``joint_over_dpo``: joint / DPO step time (target <= 1.10: the SFT term reuses the
  chosen half of the DPO forward, so it adds no forward);
- ``workers``: median step time of the real Ray Train + DeepSpeed loop with 1 and 2 workers
  (same per-worker batch), and throughput in rows/s.

Default model: the packaged SmolLM2-135M if prepared (``python -m jobs.prepare_model``),
else a 4-layer, 256-wide Llama built from config.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rac.models import ModelConfig, load_model, load_tokenizer  # noqa: E402
from rac.testing.tiny import save_tiny_model  # noqa: E402
from rac.training.data import pad_batch, preference_examples  # noqa: E402
from rac.training.losses import completion_logps, rac_loss, sft_loss  # noqa: E402

SMOLLM = Path("outputs/models/smollm2-135m-instruct")


def demo_pairs(n: int) -> list[dict]:
    from rac.data import load_data

    recs = load_data("demo").records
    return [{"id": r["id"], "query": r["query"], "passages": [{"text": "Passage about " + r["question"]}] * 3,
             "chosen": r["question"], "rejected": recs[(i + 7) % len(recs)]["question"]}
            for i, r in enumerate(recs[:n])]


def time_steps(model, fn, repeats: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        opt.zero_grad()
        fn().backward()
        opt.step()
        if i:  # the first step allocates optimizer state
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def loss_variants(model_dir: Path, batch: int, repeats: int) -> dict:
    tok = load_tokenizer(model_dir, padding_side="right")
    model = load_model(ModelConfig(path=str(model_dir))).train()
    ref = load_model(ModelConfig(path=str(model_dir))).eval().requires_grad_(False)
    pairs = preference_examples(demo_pairs(batch), tok, max_length=256, max_answer_tokens=48)
    both = pad_batch([p["chosen_input_ids"] for p in pairs] + [p["rejected_input_ids"] for p in pairs],
                     [p["chosen_labels"] for p in pairs] + [p["rejected_labels"] for p in pairs], tok.pad_token_id)
    chosen = pad_batch([p["chosen_input_ids"] for p in pairs], [p["chosen_labels"] for p in pairs], tok.pad_token_id)
    inputs = {"input_ids": both["input_ids"], "attention_mask": both["attention_mask"]}
    with torch.no_grad():
        pre, _ = completion_logps(ref(**inputs).logits, both["labels"])

    def ref_logps(precomputed: bool):
        if precomputed:
            return pre
        with torch.no_grad():
            return completion_logps(ref(**inputs).logits, both["labels"])[0]

    def pair_loss(gamma: float, precomputed: bool):
        logps, counts = completion_logps(model(**inputs).logits, both["labels"])
        r = ref_logps(precomputed)
        return rac_loss(logps[:batch], logps[batch:], r[:batch], r[batch:], counts[:batch], gamma, 0.1)["loss"]

    def sft():
        return sft_loss(model(input_ids=chosen["input_ids"], attention_mask=chosen["attention_mask"]).logits,
                        chosen["labels"])

    out = {"sft": time_steps(model, sft, repeats)}
    for precomputed in (True, False):
        suffix = "precomputed_ref" if precomputed else "ref_forward"
        out[f"dpo_{suffix}"] = time_steps(model, lambda p=precomputed: pair_loss(1.0, p), repeats)
        out[f"joint_{suffix}"] = time_steps(model, lambda p=precomputed: pair_loss(0.5, p), repeats)
    return {"step_s": {k: round(v, 4) for k, v in out.items()},
            "joint_over_dpo": {s: round(out[f"joint_{s}"] / out[f"dpo_{s}"], 3)
                               for s in ("precomputed_ref", "ref_forward")},
            "seq_len": int(both["input_ids"].shape[1]), "pairs_per_step": batch}


def worker_scaling(model_dir: Path, batch: int) -> dict:
    import pyarrow.parquet as pq
    import ray

    from rac.data.config import DataConfig
    from rac.data.prepare import prepare_data
    from rac.data.schema import records_to_table
    from rac.retrieval import EmbeddedBM25Retriever
    from rac.training import SFTConfig, read_metrics, run_training
    from rac.training.config import ScalingSection

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        loaded, corpus = prepare_data(DataConfig(split_fractions=[0.9, 0.05, 0.05]))
        EmbeddedBM25Retriever.build(corpus, Path(tmp) / "bm25")
        hits = EmbeddedBM25Retriever(Path(tmp) / "bm25").search([r["query"] for r in loaded.records], 3)
        (Path(tmp) / "rows").mkdir()
        pq.write_table(records_to_table([{**r, "passages": h} for r, h in zip(loaded.records, hits, strict=True)]),
                       Path(tmp) / "rows" / "part-0.parquet")
        for workers in (1, 2):
            cfg = SFTConfig(input_dir=str(Path(tmp) / "rows"), output_dir=str(Path(tmp) / f"w{workers}"),
                            model=ModelConfig(path=str(model_dir)), max_steps=6, per_worker_batch_size=batch,
                            save_steps=100, eval_steps=100, eval_fraction=0.0, max_length=256,
                            scaling=ScalingSection(num_workers=workers, cpus_per_worker=1))
            run_training(cfg)
            times = [m["step_time_s"] for m in read_metrics(cfg.output_dir)][1:]
            step = statistics.median(times)
            out[f"{workers}_workers"] = {"step_s": round(step, 4), "rows_per_s": round(workers * batch / step, 2)}
    ray.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-workers", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or (SMOLLM if (SMOLLM / "config.json").is_file() else
                                   save_tiny_model(Path(tmp) / "m", hidden=256, layers=4, heads=8))
        result = {"model": str(model_dir), "threads": torch.get_num_threads(), **loss_variants(model_dir, args.batch,
                                                                                             args.repeats)}
        result["target_joint_over_dpo_le_1.10_met"] = all(v <= 1.10 for v in result["joint_over_dpo"].values())
        if not args.skip_workers:
            result["workers"] = worker_scaling(model_dir, args.batch)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
