"""What every job does around its one library call: config, logging, Ray, exit codes.

Every door takes ``--storage DIR`` (or ``RAC_STORAGE``): the root every relative output,
index, checkpoint and model path is resolved against before any work (:mod:`rac.storage`).

Exit codes: 0 done; 1 bad input, or a service or resource that failed (a data file that
cannot be read, a search server that does not answer, a stage left with failed rows, a
full disk, a path in the config that leads nowhere): a message on stderr, no traceback;
2 bad config (an unknown key, an impossible value), found before any work starts;
143 (128 + SIGTERM) stopped by SIGTERM (``ray job stop``, Kubernetes, ``timeout``): the stage
stopped, the Ray work the job started shut down, and the same command resumes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from rac.config import ConfigError, parse_config
from rac.data.loaders import DataFormatError
from rac.failures import StageIncompleteError
from rac.retrieval.base import RetrievalError
from rac.storage import prepare_storage

C = TypeVar("C")
#: Exit code of a job stopped by SIGTERM, as a shell reports a process killed by it.
EXIT_STOPPED = 128 + signal.SIGTERM

#: Errors that are the user's to fix (exit 1): print the message, no traceback. OSError
#: covers a missing file, a denied permission and a full disk; ImportError an optional
#: dependency not installed (its message says what to install).
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, DataFormatError, RetrievalError, StageIncompleteError,
                                                OSError, ImportError, MemoryError)


def init_ray() -> bool:
    """Join the cluster given by RAY_ADDRESS (as under ``ray job submit``) or start a local one.
    Returns whether this call connected (and so the job shuts its Ray down at the end)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
    return True


def run(config_cls: type[C], fn: Callable[[C], Any], argv: list[str] | None = None,
        use_ray: bool = True, preflight: Callable[[C], Any] | None = None) -> int:
    """Parse ``config_cls`` from argv, call ``fn(cfg)``; return the process exit code.

    ``preflight(cfg)`` runs the config's checks that need its resolved paths, before Ray starts:
    a :class:`ConfigError` there exits 2, as one in parsing does.
    """
    logging.basicConfig(level=os.environ.get("RAC_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    prog = "python -m " + (sys.modules["__main__"].__spec__.name if sys.modules["__main__"].__spec__ else "jobs")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, storage = pop_option(argv, "--storage", "a directory")
        cfg = parse_config(config_cls, argv, prog=prog)
        root = prepare_storage(cfg, storage)  # every relative path made absolute here, before any work
        if preflight is not None:
            preflight(cfg)  # the config's checks that need its resolved paths
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    logging.getLogger("rac").info("storage root: %s", root)
    started_ray, previous_handler = False, None
    try:
        if use_ray:
            started_ray = init_ray()
        previous_handler = _stop_on_sigterm()  # after Ray's own handlers, which it installs at init
        fn(cfg)
    except KeyboardInterrupt:
        if not _STOPPED:
            raise
        print(f"stopped: got {signal.Signals(_STOPPED[-1]).name}; the outputs written so far are kept, and the "
              f"same command resumes", file=sys.stderr)
        return EXIT_STOPPED
    except Exception as e:  # noqa: BLE001 - sorted below; anything else keeps its traceback
        cause = user_error(e)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 1
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if started_ray:  # what this job started, and nothing else: its workers, actors, local Ray
            import ray

            ray.shutdown()
    return 0


class JobStopped(KeyboardInterrupt):
    """The job got SIGTERM (``ray job stop``, Kubernetes, ``timeout``).

    A KeyboardInterrupt, because that is what Ray's blocking calls (``ray.get`` in
    ``trainer.fit()``) let through when a signal handler raises; they may raise a fresh
    KeyboardInterrupt of their own, so :func:`run` tells a stop by :data:`_STOPPED`.
    """


#: The signal that stopped the job, once one has (set by the SIGTERM handler).
_STOPPED: list[int] = []


def _stop_on_sigterm() -> Any:
    """Turn SIGTERM into :class:`JobStopped` in the main thread, so the job unwinds: the stage
    stops, Ray work this job started is shut down, and the outputs stay as a rerun expects.
    Returns the previous handler (None off the main thread, where no handler can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        _STOPPED.append(signum)
        raise JobStopped(f"got {signal.Signals(signum).name}")

    return signal.signal(signal.SIGTERM, stop)


def pop_option(argv: list[str], option: str, value: str = "a value") -> tuple[list[str], str | None]:
    """``argv`` without ``option VALUE`` (an option of the door, not a config key), and VALUE.

    ``value`` names what the option takes, for the error when it is missing.
    """
    if option not in argv:
        return argv, None
    i = argv.index(option)
    if i + 1 >= len(argv):
        raise ConfigError(f"{option} needs {value}")
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
