"""The memory plan's estimates against memory measured on CPU, for the demo pipeline's settings.

    python bench/memory_plan.py [--config configs/demo.yaml] [--model DIR]

Model: ``--model``, else the config's ``base_model`` (the packaged SmolLM2-135M that ``make run``
prepares), else a tiny random Llama (``rac.testing.tiny``); the report says which. Everything runs
in float32 in this process (``rac.models.memory.cpu_allocations`` reads the CPU allocator through
torch's profiler):

- ``sft_step``: one optimizer step (the second: AdamW's state in place) of the SFT settings
  (``sft.per_worker_batch_size`` rows of ``sft.max_length`` tokens; the LM head on the last
  ``max_answer_tokens`` positions, as the training forward keeps to the answer). Estimate: the
  plan's model states (DeepSpeed's ZeRO-0 figure, which counts DDP's 4 bytes a parameter of
  all-reduce buckets that one process does not allocate), activations and LM head;
- ``sft_states``: weights, gradients and AdamW's moments after that step, against the ZeRO-0
  figure less DDP's buckets;
- ``negatives_batch``: one batch of the negatives actor (both models, ``negatives.pool.batch_size``
  demo rows, ``max_prompt_tokens``, ``sampling.max_new_tokens``) against the negatives plan.

Prints one JSON object with the machine (:func:`rac.machine.describe_machine`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _ratio(estimate: int, measured: int) -> dict[str, Any]:
    return {"estimate_mb": round(estimate / 1e6, 1), "measured_mb": round(measured / 1e6, 1),
            "estimate_over_measured": round(estimate / measured, 3)}


def sft_step(cfg: Any, model_dir: str) -> dict[str, Any]:
    import torch

    from rac.models.factory import load_model
    from rac.models.memory import activation_bytes, cpu_allocations, lm_head_bytes, model_shape, model_states_bytes

    model = load_model(model_dir, "float32").train()
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rows, tokens, answer = cfg.per_worker_batch_size, cfg.max_length, cfg.max_answer_tokens
    ids = torch.randint(0, model.config.vocab_size, (rows, tokens), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        logits = model(input_ids=ids, logits_to_keep=answer + 1).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, -answer:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    _, after_first = cpu_allocations(step)
    states = 4 * params + after_first
    peak, _ = cpu_allocations(step)
    seconds = time.perf_counter() - start
    shape = model_shape(model_dir)
    ds_states = model_states_bytes(params, shape.largest_layer_params, 0, 1)
    items = {"model_states": ds_states,
             "activations": activation_bytes(shape, rows, tokens, "float32", False, cfg.model.attn_implementation),
             "lm_head": lm_head_bytes(shape, rows * answer)}
    return {"sft_step": {**_ratio(sum(items.values()), states + peak),
                         "estimate_items_mb": {k: round(v / 1e6, 1) for k, v in items.items()},
                         "rows": rows, "tokens": tokens, "seconds": round(seconds, 1)},
            "sft_states": {**_ratio(ds_states - 4 * params, states), "params": params}}


def negatives_batch(cfg: Any, model_dir: str, out: Path) -> dict[str, Any]:
    import pyarrow as pa

    from bench.gpu_check import demo_rows
    from rac.decoding.memory import negatives_items
    from rac.decoding.stage import NegativesBatch
    from rac.models.memory import cpu_allocations, model_shape

    cfg = dataclasses.replace(cfg, grounded_model=model_dir, ungrounded_model=model_dir, output_dir=str(out),
                              dtype="float32", device="cpu")
    actor = NegativesBatch(cfg, {"grounded_model": "m", "ungrounded_model": "m"})
    weights = sum(p.numel() * p.element_size() for m in (actor.decoder.grounded_model,
                                                         actor.decoder.ungrounded_model) for p in m.parameters())
    rows = (demo_rows() * cfg.pool.batch_size)[: cfg.pool.batch_size]
    rows = [{**r, "id": f"{r['id']}-{i}"} for i, r in enumerate(rows)]
    start = time.perf_counter()
    result: dict[str, Any] = {}
    peak, _ = cpu_allocations(lambda: result.update(table=actor(pa.Table.from_pylist(rows))))
    seconds = time.perf_counter() - start
    shape = model_shape(model_dir)
    items = negatives_items(cfg, shape, shape)
    return {"negatives_batch": {**_ratio(sum(b for _, b in items), weights + peak),
                                "estimate_items_mb": {w: round(b / 1e6, 1) for w, b in items},
                                "rows": len(rows), "seconds": round(seconds, 1),
                                "errors": sum(r["error"] is not None for r in result["table"].to_pylist())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    import torch

    from rac.config import parse_config
    from rac.machine import describe_machine
    from rac.pipeline import PipelineConfig

    torch.manual_seed(0)
    cfg = parse_config(PipelineConfig, ["--config", args.config])
    stages = cfg.stage_configs()
    with tempfile.TemporaryDirectory(prefix="rac-memory-plan-") as tmp:
        model_dir = args.model or (cfg.base_model if (Path(cfg.base_model) / "config.json").is_file() else None)
        if model_dir is None:
            from rac.testing.tiny import save_tiny_model

            model_dir = str(save_tiny_model(Path(tmp) / "tiny", hidden=256, layers=4))
            model = "tiny random Llama (4 layers, hidden 256): the config's base model is not prepared"
        else:
            model = model_dir
        report = {"config": args.config, "model": model, "machine": describe_machine(), "dtype": "float32",
                  **sft_step(stages["sft_grounded"], model_dir),
                  **negatives_batch(stages["negatives"], model_dir, Path(tmp) / "negatives")}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
