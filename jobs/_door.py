"""What every job does around its one library call: config, logging, Ray, exit codes.

Every door takes ``--storage DIR`` (or ``RAC_STORAGE``): the root every relative output,
index, checkpoint and model path is resolved against before any work (:mod:`rac.storage`).

Exit codes: 0 done; 1 bad input, or a service or resource that failed (a data file that
cannot be read, a search server that does not answer, a stage left with failed rows, a
full disk, a path in the config that leads nowhere): a message on stderr, no traceback;
2 bad config (an unknown key, an impossible value), found before any work starts.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from rac.config import ConfigError, parse_config
from rac.data.loaders import DataFormatError
from rac.failures import StageIncompleteError
from rac.retrieval.base import RetrievalError
from rac.storage import STORAGE_ENV, prepare_storage

C = TypeVar("C")

#: Errors that are the user's to fix (exit 1): print the message, no traceback. OSError
#: covers a missing file, a denied permission and a full disk; ImportError an optional
#: dependency not installed (its message says what to install).
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataFormatError, RetrievalError, StageIncompleteError,
                                                OSError, ImportError, MemoryError)


def init_ray() -> None:
    """Join the cluster given by RAY_ADDRESS (as under ``ray job submit``) or start a local one."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)


def run(config_cls: type[C], fn: Callable[[C], Any], argv: list[str] | None = None,
        use_ray: bool = True) -> int:
    """Parse ``config_cls`` from argv, call ``fn(cfg)``; return the process exit code."""
    logging.basicConfig(level=os.environ.get("RAC_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prog = "python -m " + (sys.modules["__main__"].__spec__.name if sys.modules["__main__"].__spec__ else "jobs")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, storage = pop_option(argv, "--storage")
        cfg = parse_config(config_cls, argv, prog=prog)
        root = prepare_storage(cfg, storage)  # every relative path made absolute here, before any work
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    logging.getLogger("rac").info("storage root: %s", root)
    os.environ[STORAGE_ENV] = str(root)  # recorded in run_info.json
    try:
        if use_ray:
            init_ray()
        fn(cfg)
    except Exception as e:  # noqa: BLE001 - sorted below; anything else keeps its traceback
        cause = user_error(e)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 1
    return 0


def pop_option(argv: list[str], option: str) -> tuple[list[str], str | None]:
    """``argv`` without ``option VALUE`` (an option of the door, not a config key), and VALUE."""
    if option not in argv:
        return argv, None
    i = argv.index(option)
    if i + 1 >= len(argv):
        raise ConfigError(f"{option} needs a value")
    return argv[:i] + argv[i + 2:], argv[i + 1]


def user_error(e: BaseException) -> BaseException | None:
    """The user's error behind ``e`` (also when a Ray task or actor raised it), or None for a bug."""
    seen = 0
    while e is not None and seen < 8:  # Ray wraps a worker's exception in its own, sometimes twice
        if isinstance(e, USER_ERRORS) and not _is_ray_wrapper(e):
            return e
        e = getattr(e, "cause", None) or e.__cause__
        seen += 1
    return None


def _is_ray_wrapper(e: BaseException) -> bool:
    """Ray's RayTaskError subclasses the worker's exception type, but its message is a traceback."""
    ray = sys.modules.get("ray")
    return ray is not None and isinstance(e, ray.exceptions.RayError)
