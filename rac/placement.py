"""Where a stage's work ran: each training worker and actor records its Ray node once, and the
stage's ``run_info.json`` lists the nodes of each role (``nodes``) beside the driver's.

On a cluster whose head runs no stage work, this is how a user (and the multi-node test)
sees that training workers and decoding actors were placed on the worker nodes.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from rac.durable import read_json, write_json

PLACEMENT_DIR = "placement"


def current_node() -> str | None:
    """The Ray node id of this process, or None outside Ray."""
    import ray  # here, not at the top: rac.config imports this module and must import without Ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def record_placement(out_dir: str | Path, role: str) -> None:
    """Record that this process (a training worker, an actor of ``role``) runs on its node."""
    folder = Path(out_dir) / PLACEMENT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / f"{role}-{socket.gethostname()}-{os.getpid()}.json",
               {"role": role, "node_id": current_node(), "host": socket.gethostname(), "pid": os.getpid()})


def placements(out_dir: str | Path) -> dict[str, Any]:
    """``{role: [node ids]}`` of what ran for the stage in ``out_dir``, and the driver's node."""
    nodes: dict[str, set[str]] = {}
    for path in sorted((Path(out_dir) / PLACEMENT_DIR).glob("*.json")):
        record = read_json(path)
        if record and record.get("node_id"):
            nodes.setdefault(record["role"], set()).add(record["node_id"])
    return {"driver": current_node(), **{role: sorted(ids) for role, ids in sorted(nodes.items())}}
