"""Every model stage on a tiny slice with a tiny random model, on one GPU, checked against its memory plan.

    python bench/gpu_check.py                 # on CUDA (about a minute on one GPU)
    python bench/gpu_check.py --device cpu    # the same run on the CPU (tests/bench/test_gpu_check.py)

Runs in this process, without Ray, the very objects the stages' actors and workers run: grounded
SFT (TRL's trainer as ``rac.training.worker.build_trainer`` builds it, 2 steps), the negatives
actor (``NegativesBatch``: both models, mixture decoding), the joint objective on those negatives
(2 steps), the evaluation's generator actor (``GenerateBatch``) and the serving generator
(``QuestionGenerator``), on 8 demo rows with a 2-layer Llama (``rac.testing.tiny``). Checks, per stage:

- ``on_device``: every parameter of the stage's models is on the device asked for;
- ``dtype``: the models hold the dtype asked for (training: the compute precision asked for,
  bf16 on CUDA, and the weights in the dtype the training loader's rule gives);
- ``no_host_fallback`` (negatives): while the mixture decoder runs, no torch operation makes a
  tensor on the host, except the per-row seeded uniforms drawn there once per batch; the host
  reads of the decoding loop (``tolist``, ``item``, ``bool``) are counted per generated token;
- ``peak_within_plan``: ``torch.cuda.max_memory_allocated`` during the stage is at most the
  stage's memory plan (``rac.models.memory``) plus :data:`CUDA_ALLOWANCE_MB` for CUDA's own
  workspaces (cuBLAS), which the allocator counts and a tiny model does not dwarf.

On the CPU, the GPU-only checks (``on_device`` for cuda, ``no_host_fallback``,
``peak_within_plan``) are reported as ``"n/a"``, not faked. Prints one JSON object (with
``machine``); exit status 0 when every applicable check passed, else 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: MB the CUDA libraries' workspaces (cuBLAS, cuDNN) may add to a stage's allocations.
CUDA_ALLOWANCE_MB = 64
#: Torch functions that may make host tensors inside the decoder: the per-row seeded uniforms
#: (``MixtureDecoder._uniforms``: drawn on the host for reproducibility, moved once per batch).
SEEDED_DRAWS = {"rand", "stack", "manual_seed"}
ROWS = 8


def demo_rows() -> list[dict[str, Any]]:
    """8 demo rows in the retrieval stage's schema, each with three demo passages."""
    from rac.data import load_data

    data = load_data("demo")
    passages = [{"id": f"p{i}", "text": d["text"], "score": 1.0} for i, d in enumerate(data.documents[:3])]
    return [{**r, "passages": passages, "split": "t1"} for r in data.records[:ROWS]]


class HostOps:
    """A torch function mode that records what makes host tensors, and the host reads, while on."""

    def __init__(self) -> None:
        self.host_ops: dict[str, int] = {}
        self.host_reads = 0

    @contextmanager
    def watching(self):
        import torch
        from torch.overrides import TorchFunctionMode

        watcher = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                name = getattr(func, "__name__", str(func))
                if name in ("tolist", "item", "__bool__"):
                    watcher.host_reads += 1
                elif isinstance(out, torch.Tensor) and out.device.type == "cpu":
                    watcher.host_ops[name] = watcher.host_ops.get(name, 0) + 1
                return out

        with Mode():
            yield self


def model_checks(models: list[Any], device: str, dtype: str) -> dict[str, Any]:
    devices = sorted({p.device.type for m in models for p in m.parameters()})
    dtypes = sorted({str(p.dtype).replace("torch.", "") for m in models for p in m.parameters()})
    return {"devices": devices, "dtypes": dtypes, "checks": {"on_device": devices == [device],
                                                              "dtype": dtypes == [dtype]}}


@contextmanager
def peak(device: str, result: dict[str, Any], plan: Any):
    """Run a stage; record its time, its CUDA peak and the check against ``plan`` (a StagePlan)."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    yield
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["plan_mb"] = round(plan.total / 1e6, 2)
    if device == "cuda":
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated()
        result["peak_mb"] = round(measured / 1e6, 2)
        result["resident_before_mb"] = round(before / 1e6, 2)
        result["checks"]["peak_within_plan"] = measured <= plan.total + CUDA_ALLOWANCE_MB * 1e6
    else:
        result["peak_mb"] = "n/a"
        result["checks"]["peak_within_plan"] = "n/a"


def _training(kind: str, model_dir: str, out: Path, rows: list[dict[str, Any]], device: str, dtype: str) -> Any:
    from rac.config import from_dict
    from rac.training.config import RACConfig, SFTConfig

    cls = SFTConfig if kind == "sft" else RACConfig
    return from_dict(cls, {
        "model": {"path": model_dir, "dtype": dtype}, "output_dir": str(out / kind), "run_name": kind,
        "max_length": 160, "max_answer_tokens": 32, "max_steps": 2, "per_worker_batch_size": 2,
        "eval_fraction": 0.0, "save_steps": 1000, "logging_steps": 1, "learning_rate": 1e-4,
        "scaling": {"num_workers": 1, "use_gpu": device == "cuda"}})


def run_training(kind: str, model_dir: str, out: Path, rows: list[dict[str, Any]], device: str,
                 dtype: str) -> dict[str, Any]:
    """2 steps of SFT or the joint objective; ``rows`` are retrieved rows or T2 pairs."""
    import torch

    from rac.models.factory import load_tokenizer
    from rac.training.config import DATA_DIR
    from rac.training.data import write_dataset
    from rac.training.memory import memory_plan
    from rac.training.worker import build_trainer, weights_dtype

    cfg = _training(kind, model_dir, out, rows, device, dtype)
    tokenizer = load_tokenizer(model_dir, padding_side="right")
    write_dataset(cfg.examples(rows, tokenizer), Path(cfg.output_dir) / DATA_DIR / "train")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as local:
        trainer = build_trainer(cfg, local, callbacks=[])
        result.update(model_checks([trainer.model], device, weights_dtype(cfg, dtype)))
        with peak(device, result, memory_plan(cfg)):
            trainer.train()
        on = sorted({p.device.type for p in trainer.model.parameters()})
        result["checks"]["on_device"] = on == [device]
        result["precision"] = "bfloat16" if trainer.args.bf16 else "float16" if trainer.args.fp16 else "float32"
        result["checks"]["dtype"] = result["checks"]["dtype"] and result["precision"] == dtype
        result["loss"] = round(float(trainer.state.log_history[-1].get("train_loss", float("nan"))), 4)
        del trainer
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def run_negatives(model_dir: str, out: Path, rows: list[dict[str, Any]], device: str,
                  dtype: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    import pyarrow as pa

    from rac.config import from_dict
    from rac.decoding.config import NegativesConfig
    from rac.decoding.memory import memory_plan
    from rac.decoding.stage import NegativesBatch

    cfg = from_dict(NegativesConfig, {
        "grounded_model": model_dir, "ungrounded_model": model_dir, "output_dir": str(out / "negatives"),
        "dtype": dtype, "device": device, "max_prompt_tokens": 128,
        "sampling": {"max_new_tokens": 16, "stop_at_question": False, "ignore_eos": True},
        "pool": {"num_gpus": 1 if device == "cuda" else 0, "batch_size": ROWS}})
    actor = NegativesBatch(cfg, {"grounded_model": "tiny", "ungrounded_model": "tiny"})
    decoder = actor.decoder
    result = model_checks([decoder.grounded_model, decoder.ungrounded_model], device, dtype)
    watcher = HostOps()
    with peak(device, result, memory_plan(cfg)), watcher.watching():
        table = actor(pa.Table.from_pylist(rows))
    pairs = table.to_pylist()
    errors = [r["error"] for r in pairs if r["error"]]
    generated = sum(len(r["rejected_token_ids"] or []) for r in pairs)
    fallback = {k: v for k, v in watcher.host_ops.items() if k not in SEEDED_DRAWS}
    result.update(rows=len(pairs), errors=errors[:3], generated_tokens=generated,
                  host_reads_per_step=round(watcher.host_reads / max(1, cfg.sampling.max_new_tokens), 2),
                  host_tensor_ops=fallback if device == "cuda" else "n/a (the models run on the host)")
    result["checks"]["no_host_fallback"] = (not fallback) if device == "cuda" else "n/a"
    result["checks"]["all_rows_decoded"] = not errors and generated > 0
    return result, [{**r, "question": r["chosen"]} for r in pairs if not r["error"]]


def run_evaluation(model_dir: str, out: Path, rows: list[dict[str, Any]], device: str, dtype: str) -> dict[str, Any]:
    import pyarrow as pa

    from rac.config import from_dict
    from rac.evaluation.config import EvaluateConfig
    from rac.evaluation.memory import memory_plan
    from rac.evaluation.stage import GenerateBatch

    cfg = from_dict(EvaluateConfig, {
        "systems": [{"name": "tiny", "path": model_dir}], "output_dir": str(out / "evaluate"), "dtype": dtype,
        "device": device, "max_prompt_tokens": 128, "max_new_tokens": 16, "embedding_model": None,
        "pool": {"num_gpus": 1 if device == "cuda" else 0, "batch_size": ROWS}})
    actor = GenerateBatch(cfg, cfg.systems[0])
    result = model_checks([actor.model], device, dtype)
    with peak(device, result, memory_plan(cfg)[0]):
        table = actor(pa.Table.from_pylist(rows))
    result["checks"]["all_rows_generated"] = all(r["error"] is None for r in table.to_pylist())
    return result


def run_serving(model_dir: str, rows: list[dict[str, Any]], device: str, dtype: str) -> dict[str, Any]:
    from rac.config import from_dict
    from rac.models import build_prompt
    from rac.serving.config import ServeConfig
    from rac.serving.generator import QuestionGenerator
    from rac.serving.memory import memory_plan

    cfg = from_dict(ServeConfig, {"model_path": model_dir, "dtype": dtype, "device": device,
                                  "generator": {"max_batch_size": ROWS, "max_prompt_tokens": 128,
                                                "deployment": {"num_gpus": 1 if device == "cuda" else 0}}})
    generator = QuestionGenerator(cfg.model_path, dtype=cfg.dtype, device=cfg.device,
                                  num_gpus=cfg.generator.deployment.num_gpus)
    result = model_checks([generator.model], device, dtype)
    prompts = [build_prompt(generator.tokenizer, r["query"], r["passages"], grounded=True, max_tokens=128).text
               for r in rows]
    with peak(device, result, memory_plan(cfg)):
        questions = generator.generate(prompts, 16)
    result["checks"]["all_prompts_answered"] = len(questions) == len(prompts)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args(argv)
    import torch

    from rac.machine import describe_machine
    from rac.testing.tiny import save_tiny_model

    report: dict[str, Any] = {"device": args.device, "machine": describe_machine(), "stages": {}}
    if args.device == "cuda" and not torch.cuda.is_available():
        report["error"] = "no CUDA device is visible; run with --device cpu"
        print(json.dumps(report, indent=2))
        return 1
    if args.device == "cuda":
        report["gpu"] = {"name": torch.cuda.get_device_name(0),
                         "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1),
                         "bf16": torch.cuda.is_bf16_supported(), "torch_cuda": torch.version.cuda}
    dtype = "bfloat16" if args.device == "cuda" else "float32"  # bf16 emulation is slow on many CPUs
    report["dtype_asked"] = dtype
    torch.manual_seed(0)
    start = time.perf_counter()
    stages = report["stages"]
    with tempfile.TemporaryDirectory(prefix="rac-gpu-check-") as tmp:
        out = Path(tmp)
        model_dir = str(save_tiny_model(out / "tiny", weight_std=0.2))
        rows = demo_rows()
        steps = [
            ("sft_grounded", lambda: run_training("sft", model_dir, out, rows, args.device, dtype)),
            ("negatives", lambda: run_negatives(model_dir, out, rows, args.device, dtype)),
        ]
        for name, step in steps:
            try:
                result = step()
                if name == "negatives":
                    result, pairs = result
                stages[name] = result
            except Exception as e:  # noqa: BLE001 - a stage that raises is a failed check, reported
                stages[name] = {"error": f"{type(e).__name__}: {e}", "checks": {"ran": False}}
                pairs = []
        later = [
            ("train_rac", lambda: run_training("rac", model_dir, out, pairs, args.device, dtype)),
            ("evaluate", lambda: run_evaluation(model_dir, out, rows, args.device, dtype)),
            ("serve", lambda: run_serving(model_dir, rows, args.device, dtype)),
        ]
        for name, step in later:
            try:
                stages[name] = step()
            except Exception as e:  # noqa: BLE001
                stages[name] = {"error": f"{type(e).__name__}: {e}", "checks": {"ran": False}}
    report["seconds"] = round(time.perf_counter() - start, 1)
    failed = [f"{s}.{c}" for s, r in stages.items() for c, v in r["checks"].items() if v is False]
    report["failed_checks"] = failed
    report["ok"] = not failed
    print(json.dumps(report, indent=2, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
