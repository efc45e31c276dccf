"""A local Elasticsearch-REST-compatible server for tests and benchmarks.

Starts the ``noida-db`` binary (a dev dependency, PyPI) on 127.0.0.1 with a data folder of
its own, and stops exactly that process group when done, never another server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import resources
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def noida_binary() -> Path:
    """The server binary inside the ``noida_db`` wheel (not its Python launcher, whose
    child would outlive a terminated parent)."""
    try:
        path = Path(str(resources.files("noida_db").joinpath("noida-db")))
    except ModuleNotFoundError:
        raise RuntimeError("noida-db is not installed: install the dev extras (`make setup`) "
                           "or point the tests at a server with RAC_TEST_ES_URL") from None
    path.chmod(0o755)
    return path


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except urllib.error.HTTPError:
            return  # an HTTP answer, even 401, means the server is up
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def start_server(port: int, data_dir: str | Path, log_path: str | Path | None = None) -> subprocess.Popen:
    """Start the server in its own process group; it may not be answering yet."""
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the process
    return subprocess.Popen(
        [str(noida_binary()), "start", "--data-dir", str(data_dir), "--host", "127.0.0.1",
         "--only", "elasticsearch", "--elasticsearch-port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server started by :func:`start_server` (its whole process group)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def local_es_server(startup_timeout: float = 30) -> Iterator[str]:
    """Yield the URL of a fresh server on a free port; stop it and delete its data afterwards."""
    data_dir = tempfile.mkdtemp(prefix="rac-es-")
    port = free_port()
    proc = start_server(port, data_dir, Path(data_dir) / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, startup_timeout, proc)
        yield url
    finally:
        stop_server(proc)
        shutil.rmtree(data_dir, ignore_errors=True)
