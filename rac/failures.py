"""What a stage did, and the one failure policy: when its result counts as done.

Every ``run_*`` function of a stage returns a :class:`StageResult`: rows in, rows out, failed
rows, the errors file, the first failure, and the stage's own details. The pipeline's
manifests, the study runner, the doors and :meth:`StageResult.check_complete` read these same
fields.

A row of a stage ends in one of three ways:

- **done**;
- **bad input**: an empty query, a query with no searchable word, a retrieved row without
  passages. It is written with its ``error`` and stays so: a rerun would give the same error;
- **failed**: the search server did not answer, decoding raised, the server refused a
  passage. It is written with its ``error`` too, but it is work still to do.

A result with failed rows is **incomplete**: :meth:`StageResult.check_complete` raises
:class:`StageIncompleteError`, so neither a job nor the pipeline records it as finished (the
pipeline writes no manifest), the process exits 1 with a message naming the stage, the count
and the errors file, and the same command run again redoes exactly the failed rows (the
stages drop them from their output before resuming).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
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


@dataclass
class StageResult:
    """What one stage did: every ``run_*`` returns one.

    ``rows_in`` and ``rows_out`` are the rows the stage read and wrote (None where the stage
    has no rows of its own, such as writing a model); ``failed_rows`` the rows that are work
    still to do, listed in ``errors_file``; ``details`` the stage's own figures.
    """

    stage: str
    rows_in: int | None = None
    rows_out: int | None = None
    failed_rows: int = 0
    errors_file: str | None = None
    first_failure: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def with_failures(cls, stage: str, failed: list[dict[str, Any]], errors_file: str | Path,
                      **fields: Any) -> StageResult:
        """A result whose failed rows are ``failed`` (each with its ``error``), listed in ``errors_file``."""
        return cls(stage, failed_rows=len(failed), errors_file=str(errors_file),
                   first_failure=failed[0]["error"] if failed else None, **fields)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        """The result a manifest or ``run_info.json`` recorded (:meth:`to_dict`)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_complete(self) -> None:
        """Raise :class:`StageIncompleteError` when rows failed.

        Every door and the pipeline call this after the stage and before recording it as done.
        """
        if self.failed_rows:
            raise StageIncompleteError(self.stage, self.failed_rows, self.rows_in, str(self.errors_file),
                                       self.first_failure)
