"""Where Ray Train keeps a run's checkpoints, and which one to resume from.

The storage is ``checkpoint_storage`` (a directory every node mounts, or a URI such as
``s3://bucket/prefix`` or ``gs://bucket/prefix``, with ``checkpoint_endpoint`` for an
S3-compatible store), else ``<output_dir>/ray`` on the run's storage root. The driver
builds the filesystem once (:func:`checkpoint_storage`) and hands it to Ray Train
(``RunConfig(storage_path=, storage_filesystem=)``) and to the workers, which scan it for
the newest complete checkpoint (:func:`latest_checkpoint`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: The Hugging Face checkpoint inside a Ray Train checkpoint (RayTrainReportCallback's layout).
HF_CHECKPOINT = "checkpoint"


def checkpoint_storage(cfg: Any) -> tuple[Any, str]:
    """``(pyarrow filesystem, path on it)`` of the training config's checkpoint storage root.

    Credentials of an S3-compatible store come from the usual ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` / ``AWS_REGION`` of the driver; the filesystem (and so they)
    travel to the workers with the run.
    """
    import pyarrow.fs as pafs

    uri = cfg.checkpoint_storage or str(Path(cfg.output_dir) / "ray")
    if cfg.checkpoint_endpoint:
        path = uri.partition("://")[2]  # s3://, checked by the config
        fs = pafs.S3FileSystem(endpoint_override=cfg.checkpoint_endpoint,
                               access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
                               secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
                               region=os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION", "us-east-1")),
                               allow_bucket_creation=True)
        return fs, path.rstrip("/")
    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


def checkpoint_step(fs: Any, path: str, world: int) -> int:
    """The step of the complete Hugging Face checkpoint at ``path`` on ``fs`` (every rank's RNG
    state saved), else -1."""
    import pyarrow.fs as pafs

    rng = ["rng_state.pth"] if world == 1 else [f"rng_state_{r}.pth" for r in range(world)]
    infos = fs.get_file_info([f"{path}/trainer_state.json", *(f"{path}/{f}" for f in rng)])
    if any(info.type != pafs.FileType.File for info in infos):
        return -1
    try:
        with fs.open_input_stream(f"{path}/trainer_state.json") as f:
            return int(json.loads(f.read())["global_step"])
    except (ValueError, KeyError, OSError):
        return -1


def latest_checkpoint(reported: Any, fs: Any, run_path: str, world: int, local_dir: str | Path) -> Path | None:
    """The newest complete Hugging Face checkpoint to resume from, as a local directory.

    Ray Train hands back the latest checkpoint it registered (``reported``); one whose report
    was still in flight when a worker died is on storage but may not be registered, so the
    run's storage (``run_path`` on ``fs``) is scanned too. A checkpoint on object storage is
    downloaded into ``local_dir``.
    """
    import pyarrow.fs as pafs

    candidates: list[tuple[Any, str]] = []
    if reported is not None:
        candidates.append((reported.filesystem, f"{reported.path}/{HF_CHECKPOINT}"))
    listing = fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    candidates += [(fs, f"{info.path}/{HF_CHECKPOINT}") for info in listing
                   if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_")]
    steps = [(checkpoint_step(f, p, world), f, p) for f, p in candidates]
    best = max(steps, key=lambda s: s[0], default=None)
    if best is None or best[0] <= 0:
        return None
    _, best_fs, best_path = best
    if isinstance(best_fs, pafs.LocalFileSystem):
        return Path(best_path)
    local = Path(local_dir) / "resume" / HF_CHECKPOINT
    local.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(best_path, str(local), source_filesystem=best_fs, destination_filesystem=pafs.LocalFileSystem())
    return local
