"""Typed stage configs: dataclasses loaded from YAML and overridden from the command line.

Every stage has one ``@dataclass`` config whose fields carry ``metadata={"help": ...}``.
:func:`parse_config` builds it from ``--config file.yaml`` plus ``--key value`` (or
``--section.key value``) overrides. Unknown keys, values of the wrong type and impossible
values (checked by each config's ``__post_init__``) raise :class:`ConfigError` with a message
that says what to change.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import platform
import subprocess
import sys
import types
import typing
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from rac.placement import PLACEMENT_DIR, placements

logger = logging.getLogger(__name__)

C = TypeVar("C")

#: Packages whose versions are recorded beside every run's outputs.
RECORDED_PACKAGES = (
    "rac-on-ray", "ray", "torch", "transformers", "trl", "peft", "deepspeed", "accelerate",
    "elasticsearch", "bm25s", "pyarrow", "numpy",
)


class ConfigError(ValueError):
    """A config that cannot be run, with a message that says what to change."""


def field_help(default: Any = dataclasses.MISSING, *, help: str, storage: str | None = None, **kwargs: Any) -> Any:
    """A dataclass field with help text (``default_factory`` for mutable defaults).

    ``storage`` marks a path on the run's storage root (:mod:`rac.storage`): ``"path"``, or
    ``"model"`` for a model directory that may also be named by a PyPI package.
    """
    metadata = {"help": help, **({"storage": storage} if storage else {})}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        factory = default if callable(default) else (lambda d=default: type(d)(d))
        return dataclasses.field(default_factory=factory, metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def nested(cls: type, help: str) -> Any:
    """A field holding a nested config section.

    A section's class is named ``*Config`` (``ModelConfig``, ``DataConfig``), except where that
    name belongs to the library the section configures (Ray Train's ``ScalingConfig``,
    DeepSpeed's ``DeepSpeedConfig``, Ray Serve's ``AutoscalingConfig`` and ``DeploymentConfig``)
    or to a stage's own config (``DetectorConfig``): then ``*Section``, so that no module imports
    two classes of one name.
    """
    return dataclasses.field(default_factory=cls, metadata={"help": help})


# ----------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where it is lossless."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} is a section; give it as a mapping of its keys, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    return value


def _unknown_key_message(cls: type, key: str, prefix: str) -> str:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=1)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    return f"unknown config key '{prefix}{key}'.{hint} Valid keys here: {', '.join(names)}"


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Build config ``cls`` from a (possibly nested) mapping, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"config {prefix or 'file'} must be a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in names:
            raise ConfigError(_unknown_key_message(cls, key, prefix))
    kwargs = {k: _coerce(v, hints[k], f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}" if prefix and not str(e).startswith(prefix) else str(e)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (what is written to ``config.yaml`` beside outputs)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--{dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys at the top level")
    return data


def parse_config(cls: type[C], argv: Sequence[str] | None = None, prog: str | None = None) -> C:
    """Build ``cls`` from ``--config FILE`` and ``--key value`` overrides (later wins).

    ``--help`` prints every key with its default and help text and exits.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(f"usage: {prog or 'python -m jobs.<stage>'} [--config FILE.yaml] [--storage DIR] [--key value ...]\n")
        print(config_reference(cls))
        raise SystemExit(0)
    data: dict[str, Any] = {}
    overrides: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; options look like --key value")
        key, eq, inline = arg[2:].partition("=")
        if eq:
            raw = inline
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"--{key} needs a value")
            raw = argv[i + 1]
            i += 2
        if key == "config":
            data = load_yaml(raw)
        else:
            # YAML scalars: "3" -> 3, "true" -> True, "null" -> None, "[a, b]" -> list.
            overrides.append((key.replace("-", "_"), yaml.safe_load(raw) if raw != "" else ""))
    for key, value in overrides:
        _set_dotted(data, key, value)
    return from_dict(cls, data)


def get_dotted(cfg: Any, key: str) -> Any:
    """``cfg.a.b`` for the key ``"a.b"``."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def refuse_wired_keys(cfg: Any, wired: dict[str, tuple[str, ...]], by: str) -> None:
    """Refuse a value given for a key of a stage section that a runner sets itself (the
    pipeline, the study runner): it would be silently replaced. ``by`` says who sets it."""
    for section, keys in wired.items():
        given = getattr(cfg, section)
        default = type(given)()
        for key in keys:
            if get_dotted(given, key) != get_dotted(default, key):
                raise ConfigError(f"{section}.{key} is set by {by}, so {get_dotted(given, key)!r} would be "
                                  f"ignored; remove it from the config, or run the stage's own job to choose it")


def config_reference(cls: type, prefix: str = "", instance: Any = None) -> str:
    """Every key of ``cls`` (nested sections dotted) with its type, default and help.

    Defaults are read from ``instance`` when given: a section's defaults are those of the
    field that holds it (``NegativesConfig.pool`` differs from a bare ``ActorPoolConfig``).
    """
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        help_text = f.metadata.get("help", "")
        if instance is not None:
            default = getattr(instance, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        if dataclasses.is_dataclass(tp):
            lines.append(f"{prefix}{f.name}: section. {help_text}")
            lines.append(config_reference(tp, prefix=f"{prefix}{f.name}.",
                                          instance=default if dataclasses.is_dataclass(default) else None))
            continue
        if dataclasses.is_dataclass(default) or (isinstance(default, list) and default
                                                 and dataclasses.is_dataclass(default[0])):
            default = to_dict(default) if not isinstance(default, list) else [to_dict(d) for d in default]
        where = {"path": " [relative: under the storage root]",
                 "model": " [a relative path: under the storage root]"}.get(f.metadata.get("storage"), "")
        lines.append(f"{prefix}{f.name} ({_type_name(tp)}, default {default!r}): {help_text}{where}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- provenance


def git_revision(cwd: str | Path | None = None) -> str:
    """The checkout's revision (``+dirty`` when it has local changes), else 'unknown'.

    Under ``ray job submit`` the working_dir has no ``.git``; the submitter may pass the
    revision in ``RAC_GIT_REVISION`` (``cluster/runtime_env.yaml`` shows how).
    """

    if os.environ.get("RAC_GIT_REVISION"):
        return os.environ["RAC_GIT_REVISION"]
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(names: Iterable[str] = RECORDED_PACKAGES) -> dict[str, str]:
    """Python's version and those of the packages ``names`` ("not installed" where absent)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_run_info(out_dir: str | Path, stage: str, cfg: Any, **extra: Any) -> Path:
    """Write ``config.yaml`` (resolved) and ``run_info.json`` (versions, revision) to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    info = {
        "stage": stage,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "versions": package_versions(),
        "command": sys.argv,
        **extra,
    }
    if (out_dir / PLACEMENT_DIR).is_dir():  # where the stage's workers and actors ran
        info["nodes"] = placements(out_dir)
    path = out_dir / "run_info.json"
    path.write_text(json.dumps(info, indent=2, default=str))
    return path


# ----------------------------------------------------------------------------- shared sections


def gpu_memory_field() -> Any:
    """The config field of one GPU's memory, read by the memory plan (:mod:`rac.models.memory`)."""
    return field_help(None, help="Memory of one GPU of the nodes this runs on, in GB, for the memory plan checked "
                                 "before any work (None: from the accelerator_type Ray reports for the cluster's "
                                 "GPU nodes, e.g. A10G = 24, H100 = 80; unknown: the plan is logged, not checked).")


def check_gpu_memory(value: float | None, key: str) -> None:
    """Refuse a GPU size that is not positive, naming ``key``."""
    if value is not None and value <= 0:
        raise ConfigError(f"{key} must be > 0 GB or null, got {value}")



@dataclasses.dataclass
class ActorPoolConfig:
    """Size and per-actor resources of a Ray Data actor pool (``ActorPoolStrategy``)."""

    min_size: int = field_help(1, help="Actors the pool keeps even when idle.")
    max_size: int = field_help(2, help="Actors the pool may grow to while there is backlog.")
    num_cpus: float = field_help(1.0, help="CPUs reserved per actor.")
    num_gpus: float = field_help(0.0, help="GPUs reserved per actor (0 on CPU-only machines).")
    batch_size: int = field_help(64, help="Rows per batch handed to one actor call.")
    gpu_memory_gb: float | None = gpu_memory_field()

    def __post_init__(self) -> None:
        check_gpu_memory(self.gpu_memory_gb, "gpu_memory_gb")
        if self.min_size < 1:
            raise ConfigError(f"min_size must be at least 1, got {self.min_size}")
        if self.max_size < self.min_size:
            raise ConfigError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError("num_cpus and num_gpus must be >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")

    def map_batches_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Dataset.map_batches`` with a callable class."""
        from ray.data import ActorPoolStrategy  # here, not at the top: rac.config must import without Ray

        return {"compute": ActorPoolStrategy(min_size=self.min_size, max_size=self.max_size),
                "num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "batch_size": self.batch_size}
