"""Resumable stage output: Parquet parts written atomically, keyed by row id.

The retrieval and negatives stages write each finished block of rows as its own part, to a
temporary name that is flushed to disk and then renamed, so a part is either whole or absent;
a part found cut short all the same (a disk that lost its tail) is deleted when the next run
starts, and its rows are done again. Small JSON files that record progress (``_params.json``,
the pipeline's manifests) go through :mod:`rac.durable`'s ``write_json`` and ``read_json`` on the same
terms: written whole or not at all, and a file cut short reads as absent, never as done. A run that is
killed and started again reads the ids already written and does only the others: nothing
is lost, nothing is written twice. A ``_params.json`` beside the parts records the settings
they were made with; parts made with other settings are never mixed with new ones.

A driver killed on purpose after ``N`` parts (environment variable
:data:`FAULT_KILL_AFTER_PARTS`) is how the tests kill a run at a known point.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rac.config import ConfigError
from rac.data.loaders import DataFormatError
from rac.durable import read_json, replace_durably, write_json

logger = logging.getLogger(__name__)

#: Settings the parts of a folder were made with. The leading underscore keeps it out of
#: ``pq.read_table(folder)``, which skips names starting with '_' or '.'.
PARAMS_FILE = "_params.json"
PART_GLOB = "part-*.parquet"
#: Fault injection for tests: the driver SIGKILLs itself after writing this many parts.
FAULT_KILL_AFTER_PARTS = "RAC_FAULT_KILL_AFTER_PARTS"


def part_files(parts_dir: str | Path) -> list[Path]:
    """The parts of ``parts_dir`` (temporary files of a killed run are not parts)."""
    return sorted(Path(parts_dir).glob(PART_GLOB))


def is_whole(file: str | Path) -> bool:
    """Whether a Parquet file ends with a readable footer (a file cut short does not)."""
    try:
        pq.read_metadata(file)
        return True
    except (pa.ArrowException, OSError):
        return False


def drop_broken_parts(parts_dir: str | Path) -> int:
    """Delete what a killed or crashed run left unfinished: temporary files and parts cut
    short. Their rows are then absent, so the run redoes them. Returns the parts deleted."""
    parts_dir = Path(parts_dir)
    for stale in parts_dir.glob(".part-*.tmp"):  # a part a killed run was writing
        stale.unlink()
    broken = [f for f in part_files(parts_dir) if not is_whole(f)]
    for file in broken:
        logger.warning("%s is cut short (no Parquet footer); deleting it, its rows will be done again", file)
        file.unlink()
    return len(broken)


def _read_table(files: list[Path], **kwargs: Any) -> pa.Table:
    """``pq.read_table(files)``, a broken file named in a :class:`DataFormatError`."""
    try:
        return pq.read_table(files, **kwargs)
    except (pa.ArrowException, OSError) as e:
        bad = next((f for f in files if not is_whole(f)), files[0].parent if files else "")
        raise DataFormatError(bad, "", f"not a readable Parquet file ({e}); it may have been cut short: run "
                                       f"the stage that wrote it again") from None


def read_parts(parts_dir: str | Path, schema: pa.Schema | None = None) -> pa.Table | None:
    """All parts as one table, or None when there are none."""
    files = part_files(parts_dir)
    return _read_table(files, schema=schema) if files else None


def read_stage_output(path: str | Path, subdir: str, columns: tuple[str, ...] | list[str], absent: str,
                      expected: str) -> tuple[pa.Table, Path]:
    """The Parquet files of a stage's output (``path/subdir``, or ``path`` when it is that
    folder itself) as one table, and the folder read.

    Raises ``FileNotFoundError`` with ``absent`` (what to run) when there are no files, and
    :class:`~rac.data.loaders.DataFormatError` naming ``expected`` when ``columns`` are missing.
    """
    path = Path(path)
    folder = path / subdir if (path / subdir).is_dir() else path
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []  # ours are part-*, any will do
    if not files:
        raise FileNotFoundError(f"no Parquet files in {folder}; {absent}")
    table = _read_table(files)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataFormatError(folder, "", f"columns {missing} are missing; expected {expected}")
    return table, folder


def written_ids(parts_dir: str | Path) -> set[str]:
    """Ids in the parts of ``parts_dir``."""
    files = part_files(parts_dir)
    return set(_read_table(files, columns=["id"]).column("id").to_pylist()) if files else set()


def write_part(parts_dir: str | Path, name: str, table: pa.Table) -> Path:
    """Write ``table`` as ``parts_dir/name``: to a temporary name first, then renamed."""
    parts_dir = Path(parts_dir)
    tmp = parts_dir / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    pq.write_table(table, tmp)
    final = parts_dir / name
    replace_durably(tmp, final)  # a reader sees the whole part or none of it
    return final


def drop_error_rows(parts_dir: str | Path, prefix: str, schema: pa.Schema | None = None) -> int:
    """Remove the rows whose ``error`` starts with ``prefix`` (a failure worth retrying, not
    bad input) from the parts, so that the next run does them again.

    Each affected part is rewritten without those rows and swapped in atomically; a run
    killed in between leaves the rows absent, which the next run also does. Returns the
    number of rows removed.
    """
    removed = 0
    for file in part_files(parts_dir):
        table = pq.read_table(file, schema=schema)
        failed = pc.fill_null(pc.starts_with(table.column("error"), prefix), False)
        n_failed = pc.sum(failed).as_py() or 0
        if n_failed:
            kept = table.filter(pc.invert(failed))
            if kept.num_rows:
                write_part(parts_dir, file.name, kept)
            else:
                file.unlink()
            removed += n_failed
    return removed


def check_params(parts_dir: str | Path, params: dict[str, Any], restart_hint: str) -> None:
    """Record ``params`` for a new folder; refuse a folder whose parts were made with others.

    ``restart_hint`` tells the user how to start over instead (e.g. ``--resume false``).
    """
    parts_dir = Path(parts_dir)
    path = parts_dir / PARAMS_FILE
    params = json.loads(json.dumps(params, default=str))  # as it reads back from the file
    before = read_json(path)
    if path.is_file() and not isinstance(before, dict):
        before = None
        logger.warning("%s is cut short; the parts beside it cannot be matched to settings and are done again",
                       path)
        clear_parts(parts_dir)
    if before is not None:
        diff = {k: (before.get(k), v) for k, v in params.items() if before.get(k) != v}
        if diff:
            changes = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ConfigError(f"{parts_dir} holds rows made with other settings ({changes}); {restart_hint}, "
                              f"or set output_dir to a new directory")
    elif part_files(parts_dir):
        raise ConfigError(f"{parts_dir} holds parts without {PARAMS_FILE}; {restart_hint}, or set output_dir to a "
                          f"new directory")
    else:
        write_json(path, params)


def table_digest(table: pa.Table, columns: list[str]) -> str:
    """SHA-256 (16 hex digits) of ``columns`` of ``table`` in id order: the rows a run was given."""
    rows = table.select(columns).sort_by("id").to_pylist()
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def clear_parts(parts_dir: str | Path) -> None:
    """Delete the parts, their params and any temporary file (a fresh start)."""
    parts_dir = Path(parts_dir)
    for file in [*part_files(parts_dir), *parts_dir.glob(".part-*.tmp"), parts_dir / PARAMS_FILE]:
        file.unlink(missing_ok=True)


class PartWriter:
    """Writes the parts of one run: ``part-<time>-<run>-<n>.parquet``, names unique per run."""

    def __init__(self, parts_dir: str | Path):
        self.parts_dir = Path(parts_dir)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        drop_broken_parts(self.parts_dir)
        self.stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.parts = self.rows = 0
        kill_after = os.environ.get(FAULT_KILL_AFTER_PARTS)
        self._kill_after = int(kill_after) if kill_after else None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        write_part(self.parts_dir, f"part-{self.stamp}-{self.parts:05d}.parquet", table)
        self.parts, self.rows = self.parts + 1, self.rows + table.num_rows
        if self._kill_after is not None and self.parts >= self._kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
