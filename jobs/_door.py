"""What every job does around its one library call: config, logging, Ray, exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from rac.config import ConfigError, parse_config

C = TypeVar("C")

#: Errors that are the user's to fix: print the message, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError)


def init_ray() -> None:
    """Join the cluster given by RAY_ADDRESS (as under ``ray job submit``) or start a local one."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)


def run(config_cls: type[C], fn: Callable[[C], Any], argv: list[str] | None = None,
        use_ray: bool = True) -> int:
    """Parse ``config_cls`` from argv, call ``fn(cfg)``; return the process exit code."""
    from rac.data.loaders import DataFormatError
    from rac.retrieval.base import RetrievalError

    logging.basicConfig(level=os.environ.get("RAC_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prog = "python -m " + (sys.modules["__main__"].__spec__.name if sys.modules["__main__"].__spec__ else "jobs")
    try:
        cfg = parse_config(config_cls, argv, prog=prog)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        if use_ray:
            init_ray()
        fn(cfg)
    except (*USER_ERRORS, DataFormatError, RetrievalError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
