"""The chaos test: kill the pipeline anywhere, run it again, get the result of a run never killed.

The pipeline runs as a user starts it (``python -m jobs.pipeline``, its own process group and
local Ray). Each kill is one of: SIGKILL of the whole process group (driver and Ray) a seeded
moment after a stage starts; the driver SIGKILLed by the kernel right after it writes a part
(``RAC_FAULT_KILL_AFTER_PARTS``: mid-stage for certain); or SIGKILL of one Ray worker of the
running stage (an actor of its pool, a training worker), after which the run goes on or fails
on its own. After every kill the same command runs again. At the end the run directory is
compared with that of an uninterrupted run of the same config: the retrieved rows, the
negatives by id (rejected text, token ids and provenance), the exported models' weights (hash),
``report.json``'s metrics, and every stage's rows in and out.

``test_chaos_ci`` kills twice on the two first stages; ``test_chaos_full``
(``slow``: CI's whole suite) kills 10 times over every stage of the demo pipeline on tiny models.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rac.pipeline import MANIFEST, STARTED
from tests.e2e.conftest import ALL_STAGES, demo_args
from tests.e2e.procs import REPO, descendants, job_env, kill_group, start_job, wait_until

pytestmark = pytest.mark.slow  # pipelines killed and rerun: CI's whole suite, not the quick `make test`

SEED = 13


@dataclass
class Kill:
    """One kill: ``how`` is "group" (the process group, ``delay`` s after ``stage`` starts),
    "parts" (the driver, by the kernel, after ``parts`` parts of the first stage that writes
    parts) or "worker" (one Ray worker process, ``delay`` s after ``stage`` starts)."""

    how: str
    stage: str = ""
    delay: float = 0.0
    parts: int = 0


@dataclass
class ChaosLog:
    kills: list[dict] = field(default_factory=list)

    def line(self) -> str:
        hit = sorted({k["stage_hit"] for k in self.kills})
        return (f"{len(self.kills)} kills ({', '.join(k['how'] + '@' + k['stage_hit'] for k in self.kills)}); "
                f"stages hit: {hit}")


def _running_stage(run: Path, stages: list[str], since: float) -> str:
    """The stage this launch is in: started since ``since`` and without a manifest of this launch."""
    running = [s for s in stages if (run / s / STARTED).is_file() and (run / s / STARTED).stat().st_mtime >= since
               and not ((run / s / MANIFEST).is_file() and (run / s / MANIFEST).stat().st_mtime >= since)]
    return running[-1] if running else "between stages"


def _stage_started(run: Path, stage: str, since: float):
    path = run / stage / STARTED
    return lambda: path.is_file() and path.stat().st_mtime >= since


def _stage_finished(run: Path, stage: str, since: float):
    path = run / stage / MANIFEST
    return lambda: path.is_file() and path.stat().st_mtime >= since


def _stage_workers(pid: int) -> list[tuple[int, str]]:
    """(pid, name) of the processes below the driver that do a stage's work: Ray Data map
    workers (``ray::MapWorker(...)``) and Ray Train workers (``ray::RayTrainWorker``)."""
    return [(p, name) for p, name in descendants(pid) if name.startswith(("ray::MapWorker", "ray::RayTrainWorker"))]


def run_with_kills(run: Path, args: list[str], stages: list[str], plan: list[Kill], logs: Path) -> ChaosLog:
    """Start the pipeline once per kill, kill it as planned; the caller runs it a last time."""
    log = ChaosLog()
    for n, kill in enumerate(plan):
        since = time.time() - 1  # file times have a coarse clock on some file systems
        env = {"RAC_FAULT_KILL_AFTER_PARTS": str(kill.parts)} if kill.how == "parts" else {}
        proc = start_job("jobs.pipeline", args, logs / f"kill-{n}.log", **env)
        entry = {"how": kill.how, "planned": kill.stage}
        try:
            if kill.how == "parts":
                proc.wait(timeout=900)
                entry["exit"] = proc.returncode
            else:
                wait_until(_stage_started(run, kill.stage, since), proc, timeout=900)
                time.sleep(kill.delay)
                entry["stage_hit"] = _running_stage(run, stages, since)
                if kill.how == "group":
                    kill_group(proc)
                else:
                    # A worker of the stage (a Ray Data map worker, a Train worker): never Ray's own
                    # agents or controllers, whose loss is the node's, which a group kill covers.
                    wait_until(lambda pid=proc.pid: bool(_stage_workers(pid)), proc, timeout=60)
                    workers = _stage_workers(proc.pid)
                    if workers:
                        pid, entry["worker_killed"] = random.Random(SEED + n).choice(workers)
                        os.kill(pid, signal.SIGKILL)
                    # The run goes on (Ray restarts the actor, Train the worker group) or fails:
                    # either way, stop it once the stage is over.
                    finished = _stage_finished(run, kill.stage, since)
                    wait_until(finished, proc, timeout=600)
                    entry["stage_survived"] = finished()
        finally:
            kill_group(proc)
        if kill.how == "parts":
            entry["stage_hit"] = _running_stage(run, stages, since)
        log.kills.append(entry)
    return log


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare_runs(reference: Path, chaos: Path, stages: list[str]) -> tuple[int, list[str]]:
    """(rows lost, mismatches) of the chaos run against the reference run."""
    import pyarrow.parquet as pq

    mismatches, lost = [], 0
    for stage in stages:
        a, b = (json.loads((d / stage / MANIFEST).read_text())["result"] for d in (reference, chaos))
        if (a["rows_in"], a["rows_out"]) != (b["rows_in"], b["rows_out"]):
            mismatches.append(f"{stage}: rows in/out {a['rows_in']}/{a['rows_out']} vs {b['rows_in']}/{b['rows_out']}")
    tables = {"retrieve": ("retrieve/retrieved", ["id", "query", "passages", "split", "error"]),
              "negatives": ("negatives/negatives", ["id", "rejected", "rejected_token_ids", "provenance", "error"])}
    for stage, (sub, columns) in tables.items():
        if stage not in stages:
            continue
        ref, got = ({r["id"]: r for r in pq.read_table(d / sub, columns=columns).to_pylist()}
                    for d in (reference, chaos))
        lost += len(set(ref) - set(got))
        # A row written twice would show as more rows than ids.
        total = sum(pq.read_metadata(p).num_rows for p in (chaos / sub).glob("part-*.parquet"))
        if total != len(got):
            mismatches.append(f"{stage}: {total} rows for {len(got)} ids")
        mismatches += [f"{stage}: row {i} differs" for i in sorted(set(ref) & set(got)) if ref[i] != got[i]]
        mismatches += [f"{stage}: row {i} is extra" for i in sorted(set(got) - set(ref))]
    for stage in ("sft_grounded", "sft_ungrounded", "train_rac"):
        if stage in stages:
            ref, got = ({p.name: _sha256(p) for p in sorted((d / stage / "model").glob("*.safetensors"))}
                        for d in (reference, chaos))
            if not ref or ref != got:
                mismatches.append(f"{stage}: exported weights differ ({ref} vs {got})")
    if "evaluate" in stages:
        # Every figure of every system; not the model paths, which name each run's own directory.
        ref, got = ({name: {k: v for k, v in system.items() if k != "path"}
                     for name, system in json.loads((d / "evaluate" / "report.json").read_text())["systems"].items()}
                    for d in (reference, chaos))
        if ref != got:
            mismatches.append(f"evaluate: report.json metrics differ ({ref} vs {got})")
    return lost, mismatches


def _report(log: ChaosLog, lost: int, mismatches: list[str]) -> str:
    return f"chaos: {log.line()}; rows lost: {lost}; mismatches: {len(mismatches)} {mismatches[:5]}"


def test_chaos_ci(ray_local, tmp_path, monkeypatch):
    """Two kills on index and retrieve (the demo data, embedded BM25): one of the process group
    as the index stage starts, one of the driver mid-retrieve after its second part."""
    from jobs._door import run as run_door
    from jobs.pipeline import main as pipeline_job
    from rac.pipeline import PipelineConfig

    stages = ["index", "retrieve"]

    def args(run: Path) -> list[str]:
        return ["--config", "configs/demo.yaml", "--run_dir", str(run), "--stages", f"[{', '.join(stages)}]",
                "--retrieve_pool.batch_size", "20", "--retrieve_pool.max_size", "1", "--show", "0"]

    monkeypatch.chdir(REPO)
    # The uninterrupted run and the last rerun go through the door in this process (on the
    # session's Ray: seconds, not a new Ray each); the killed ones are processes of their own.
    assert run_door(PipelineConfig, lambda c: pipeline_job(c, None), argv=args(tmp_path / "reference")) == 0
    chaos = tmp_path / "chaos"
    log = run_with_kills(chaos, args(chaos), stages, [Kill("group", "index"), Kill("parts", parts=2)], tmp_path)
    assert len(list((chaos / "retrieve" / "retrieved").glob("part-*.parquet"))) == 2, log.kills  # killed mid-stage
    assert run_door(PipelineConfig, lambda c: pipeline_job(c, None), argv=args(chaos)) == 0
    lost, mismatches = compare_runs(tmp_path / "reference", chaos, stages)
    print(_report(log, lost, mismatches))
    assert [k["stage_hit"] for k in log.kills][1] == "retrieve"
    assert lost == 0 and not mismatches


@pytest.mark.slow
def test_chaos_full(demo_run, tmp_path):
    """K = 10 kills over every stage of the demo pipeline (tiny models), each followed by a rerun,
    against the session's uninterrupted demo run (tests/e2e/conftest.py)."""
    reference, base = demo_run.run_dir, demo_run.base_model

    rng = random.Random(SEED)
    plan = [Kill("group", "index"), Kill("parts", parts=2), Kill("worker", "retrieve", rng.uniform(0.5, 2)),
            Kill("group", "sft_grounded", rng.uniform(1, 5)), Kill("worker", "sft_grounded", rng.uniform(2, 6)),
            Kill("group", "sft_ungrounded", rng.uniform(1, 5)), Kill("parts", parts=1),
            Kill("worker", "negatives", rng.uniform(1, 3)), Kill("group", "train_rac", rng.uniform(1, 5)),
            Kill("group", "evaluate", rng.uniform(1, 5))]
    chaos = tmp_path / "chaos"
    log = run_with_kills(chaos, demo_args(chaos, base), ALL_STAGES, plan, tmp_path)
    final = subprocess.run([sys.executable, "-m", "jobs.pipeline", *demo_args(chaos, base)], cwd=REPO,
                           env=job_env(), capture_output=True, text=True, timeout=1800)
    assert final.returncode == 0, final.stderr[-3000:]
    lost, mismatches = compare_runs(reference, chaos, ALL_STAGES)
    print(_report(log, lost, mismatches))
    (tmp_path / "chaos.json").write_text(json.dumps({"kills": log.kills, "lost": lost, "mismatches": mismatches}))
    assert len(log.kills) >= 8
    assert all(k.get("worker_killed") for k in log.kills if k["how"] == "worker"), log.kills
    assert {k["stage_hit"] for k in log.kills} >= set(ALL_STAGES) - {"index"}  # index takes under a second
    assert lost == 0 and not mismatches, mismatches
