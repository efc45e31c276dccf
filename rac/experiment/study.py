"""The study's names and event log: what the runner writes and the results read.

A leaf of :mod:`rac.experiment`: the runner (:mod:`rac.experiment.runner`) runs the systems
named here and logs to ``events.jsonl``; the results (:mod:`rac.experiment.results`) read both.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EVENTS = "events.jsonl"


def now() -> str:
    """The time now, as the event log and the selection record write it (UTC, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class EventLog:
    """``events.jsonl``: one line per stage event, appended in the order they happen."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, stage: str, event: str, **extra: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"time": now(), "stage": stage, "event": event, **extra}, default=str) + "\n")


def read_events(study_dir: str | Path) -> list[dict[str, Any]]:
    """The study's event log, oldest first."""
    path = Path(study_dir) / EVENTS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def seed_name(system: str, seed: int) -> str:
    """The name of ``system`` trained with ``seed`` (its folder under ``train/`` and its name in reports)."""
    return f"{system}-s{seed}"
