"""Jobs in processes of their own, and how the tests kill them: SIGKILL to the whole process
group (the driver and the local Ray it started), as a scheduler or the OOM killer would."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def job_env(**extra: str) -> dict[str, str]:
    """The environment of a job: its own local Ray, this checkout's code."""
    return {**os.environ, "RAY_ADDRESS": "local", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **extra}


def start_job(module: str, args: list[str], log: Path, **env: str) -> subprocess.Popen:
    """``python -m module args`` in a new session (its own process group), output to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=job_env(**env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of every process below ``pid``. Ray's raylet starts its workers in
    process groups of their own, so a job's workers are found by parenthood, not by group."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            names[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append((child, names.get(child, "")))
        todo += children.get(child, [])
    return out


def kill_group(proc: subprocess.Popen, timeout: float = 30) -> bool:
    """SIGKILL every process of the job (its process group, and the Ray workers below it in
    groups of their own) and reap the driver; True once none of them is left."""
    below = [pid for pid, _ in descendants(proc.pid)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + timeout
    while group_alive(proc.pid) or any(alive(pid) for pid in below):  # init reaps orphans a moment later
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float) -> bool:
    """Poll ``condition`` until it holds (True), or the job ends or time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(0.05)
    return False


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` is left."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def session_pids(sid: int) -> list[tuple[int, str]]:
    """(pid, command) of every live process of the session ``sid`` (a job started with
    ``start_new_session``: its driver, and the local Ray it started, keep that session)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[3]) == sid:
                out.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]))
        except (OSError, ValueError, IndexError):
            continue
    return out
