"""The demo pipeline run once for the session, through the door a user runs: the main-job test
reads it, and the chaos test takes it as its uninterrupted reference."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.procs import REPO, job_env

#: Every stage the demo pipeline runs (the optional detector left out).
ALL_STAGES = ["index", "retrieve", "sft_grounded", "sft_ungrounded", "negatives", "train_rac", "evaluate"]


def demo_args(run: Path, base: Path) -> list[str]:
    """``jobs.pipeline`` on configs/demo.yaml with a tiny model in place of SmolLM2 and two
    optimizer steps per training stage. (The full demo on SmolLM2 is `make run`.)"""
    args = ["--config", "configs/demo.yaml", "--run_dir", str(run), "--base_model", str(base),
            "--stages", f"[{', '.join(ALL_STAGES)}]", "--show", "2", "--evaluate.fluency_model", str(base),
            "--evaluate.bootstrap_samples", "200", "--evaluate.embedding_model", "null",
            "--retrieve_pool.batch_size", "10", "--negatives.pool.batch_size", "4"]
    for section in ("sft", "rac"):
        args += [f"--{section}.max_steps", "2", f"--{section}.scaling.num_workers", "1"]
    return args


@dataclass
class DemoRun:
    run_dir: Path
    base_model: Path
    proc: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> DemoRun:
    """The demo pipeline, every stage, in a process of its own with a Ray of its own."""
    from rac.testing.tiny import save_tiny_model

    root = tmp_path_factory.mktemp("demo")
    base = save_tiny_model(root / "tiny")
    proc = subprocess.run([sys.executable, "-m", "jobs.pipeline", *demo_args(root / "run", base)], cwd=REPO,
                          env=job_env(), capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return DemoRun(root / "run", base, proc)
