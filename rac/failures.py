"""The one failure policy: when a stage's result counts as done.

A row of a stage ends in one of three ways:

- **done**;
- **bad input**: an empty query, a query with no searchable word, a retrieved row without
  passages. It is written with its ``error`` and stays so: a rerun would give the same error;
- **failed**: the search server did not answer, decoding raised, the server refused a
  passage. It is written with its ``error`` too, but it is work still to do.

Each stage that can fail rows reports them in its summary under the same keys:
``failed_rows`` (the count), ``errors_file`` (where they are listed with their reasons)
and ``first_failure`` (one reason, for the message). A result with failed rows is
**incomplete**: :func:`check_complete` raises :class:`StageIncompleteError`, so neither a job
nor the pipeline records it as finished (the pipeline writes no manifest), the process exits
1 with a message naming the stage, the count and the errors file, and the same command run
again redoes exactly the failed rows (the stages drop them from their output before resuming).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class StageIncompleteError(RuntimeError):
    """A stage ended with failed rows (not bad input): its result is not complete."""

    def __init__(self, stage: str, failed: int, total: int | None, errors_file: str, first_failure: str | None):
        self.stage, self.failed, self.total, self.errors_file = stage, failed, total, errors_file
        self.first_failure = first_failure
        of = f" of {total}" if total is not None else ""
        reason = f" (first: {first_failure})" if first_failure else ""
        super().__init__(
            f"stage {stage} is incomplete: {failed}{of} rows failed{reason}. They are listed in {errors_file}, "
            f"and nothing was recorded as done. Fix the cause and run the same command again: it redoes exactly "
            f"those rows and keeps the others")

    def __reduce__(self):  # pickled whole, so that it crosses from a Ray worker to the driver
        return type(self), (self.stage, self.failed, self.total, self.errors_file, self.first_failure)


def failure_summary(failed: list[dict[str, Any]], errors_file: str | Path) -> dict[str, Any]:
    """The summary keys above, from the failed rows (each with its ``error``)."""
    return {"failed_rows": len(failed), "errors_file": str(errors_file),
            "first_failure": failed[0]["error"] if failed else None}


def failed_rows(summary: dict[str, Any]) -> int:
    """How many rows of the stage that returned ``summary`` failed (0 for stages that cannot)."""
    return int(summary.get("failed_rows") or 0)


def check_complete(stage: str, summary: dict[str, Any]) -> None:
    """Raise :class:`StageIncompleteError` when ``summary`` reports failed rows.

    Every door (``jobs.index``, ``jobs.retrieve``, ``jobs.generate_negatives``) and the
    pipeline call this after the stage and before recording it as done.
    """
    n = failed_rows(summary)
    if n:
        total = next((summary[k] for k in ("records", "rows_in", "passages") if k in summary), None)
        raise StageIncompleteError(stage, n, total, str(summary.get("errors_file")), summary.get("first_failure"))
