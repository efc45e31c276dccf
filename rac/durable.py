"""Files written whole or not at all: the durable rename, and small JSON files.

A leaf module (nothing of ``rac`` below it): :mod:`rac.parts` writes its Parquet parts and
``_params.json`` through it, :mod:`rac.placement` its records, and the pipeline its manifests.
A JSON file cut short (a disk that lost its tail) reads as absent, never as done.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def replace_durably(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` to disk, then rename it to ``final``: a crash leaves the old file or the new one."""
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` whole or not at all (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    replace_durably(tmp, path)


def read_json(path: str | Path) -> Any:
    """The JSON in ``path``; None when it is absent or cut short (unreadable: its work is redone)."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        logger.warning("%s is unreadable (%s: %s); treating it as absent", path, type(e).__name__, e)
        return None
