"""The actor pool of a Ray Data stage scaling out and back on a real autoscaler with fake nodes.

    python cluster/autoscaling_demo.py [--rows 24] [--seconds-per-row 1.0] [--max-size 3]

Starts a head node with no CPUs and an autoscaling config whose worker type has one CPU
(``ray.autoscaler`` with the ``fake_multinode`` provider: real autoscaler and raylets, nodes
that are processes on this machine), runs a ``map_batches`` stage on an
``ActorPoolStrategy(min_size, max_size)`` of one-CPU actors, and records what it observes:
how many worker nodes are alive over time, and which actor (on which node) processed each
row. It then waits for the idle nodes to be released. Prints the observations as JSON and
exits 1 if any of these do not hold:

- the pool grew: more than ``min_size`` actors processed rows, at most ``max_size``;
- the cluster grew: at least that many worker nodes were alive at once during the backlog;
- the nodes were released afterwards: no worker node alive within ``--release-timeout`` s.

``ray.cluster_utils.AutoscalingCluster`` does the same start-up, but its ``start`` and
``shutdown`` run ``ray stop --force``, which kills every Ray process on the machine; this
script starts its head with ``ray start --block`` in a process group of its own (own port,
own temp dir, auth off) and stops exactly that group, then any worker process of this
cluster that left the group (found by the cluster's own temp dir in its environment).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORKER_TYPE = "cpu_worker"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def autoscaling_config(gcs_address: str, max_workers: int, idle_timeout_minutes: float) -> dict[str, Any]:
    """A ``fake_multinode`` cluster config: a head with no CPUs, 1-CPU worker nodes."""
    return {
        "cluster_name": "rac-autoscaling-demo",
        "max_workers": max_workers,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {"resources": {"CPU": 1, "object_store_memory": 100 * 1024**2}, "node_config": {},
                          "min_workers": 0, "max_workers": max_workers},
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "auth": {}, "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


def _auth_off(env: dict[str, str]) -> dict[str, str]:
    # A private throwaway cluster on 127.0.0.1: no token to create or share.
    return {**env, "RAY_AUTH_MODE": "disabled"}


def _processes_of(temp_dir: str) -> list[int]:
    """Pids of processes started by this cluster: they carry its RAY_TMPDIR (set for the
    head and inherited by everything it starts), which no other process has."""
    marker = f"RAY_TMPDIR={temp_dir}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
    return pids


@contextlib.contextmanager
def local_autoscaling_cluster(max_workers: int = 3, idle_timeout_minutes: float = 0.1,
                              startup_timeout: float = 180) -> Iterator[str]:
    """Yield the GCS address of a fresh autoscaling cluster; stop its process group after."""
    import ray

    temp_dir = tempfile.mkdtemp(prefix="racas-")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    # The node's own address: a driver resolves 127.0.0.1 to it, and must find the head there.
    address = f"{ray.util.get_node_ip_address()}:{port}"
    config_path = Path(temp_dir) / "autoscaling.json"
    config_path.write_text(json.dumps(autoscaling_config(address, max_workers, idle_timeout_minutes)))
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = _auth_off({**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1",
                     "RAY_TMPDIR": temp_dir})
    # Every port of the head is its own: another Ray on this machine may hold the defaults.
    cmd = [ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=0",
           f"--object-store-memory={100 * 1024**2}", "--include-dashboard=false",
           f"--dashboard-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
           "--dashboard-agent-listen-port=0", "--disable-usage-stats", f"--temp-dir={temp_dir}",
           f"--autoscaling-config={config_path}"]
    log = open(Path(temp_dir) / "ray-start.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Ready when `ray start` has started everything (GCS, raylet, autoscaler) and blocks;
        # the GCS port alone answers well before the head node is registered.
        deadline = time.monotonic() + startup_timeout
        log_path = Path(temp_dir) / "ray-start.log"
        while "will now block forever" not in log_path.read_text():
            if proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the head at {address} was not up within {startup_timeout:.0f}s")
            time.sleep(0.5)
        yield address
    finally:
        # Everything this cluster started (head, autoscaler, fake nodes, their workers) is in
        # the process group of `ray start`; nothing else is.
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                time.sleep(1)  # let the group's other processes handle the signal
            except subprocess.TimeoutExpired:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        # Ray's worker processes start process groups of their own; end those of this cluster.
        for _ in range(20):
            left = _processes_of(temp_dir)
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


class SlowStage:
    """Stands in for a model stage: fixed work per row; tags rows with actor and node."""

    def __init__(self, seconds_per_row: float):
        import ray

        self.seconds_per_row = seconds_per_row
        ctx = ray.get_runtime_context()
        self.actor, self.node = ctx.get_actor_id(), ctx.get_node_id()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        time.sleep(self.seconds_per_row * len(batch["id"]))
        n = len(batch["id"])
        return {"id": batch["id"], "actor": np.array([self.actor] * n), "node": np.array([self.node] * n),
                "done_at": np.full(n, time.time())}


def _alive_worker_nodes(ray: Any) -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0)


def run_demo(address: str, rows: int, seconds_per_row: float, min_size: int, max_size: int,
             release_timeout: float) -> dict[str, Any]:
    """Run the stage on the cluster at ``address``; return what was observed."""
    import ray

    from rac.config import ActorPoolConfig

    ray.init(address=address, log_to_driver=False)
    timeline: list[tuple[float, int]] = []
    stop = threading.Event()
    start = time.time()

    def watch() -> None:
        while not stop.is_set():
            timeline.append((round(time.time() - start, 1), _alive_worker_nodes(ray)))
            stop.wait(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        pool = ActorPoolConfig(min_size=min_size, max_size=max_size, num_cpus=1, batch_size=1)
        ds = ray.data.range(rows, override_num_blocks=rows).map_batches(
            SlowStage, fn_constructor_args=(seconds_per_row,), **pool.map_batches_kwargs())
        out = ds.take_all()
        finished = time.time() - start
        nodes_at_finish = _alive_worker_nodes(ray)
        released_at = None
        while time.time() - start < finished + release_timeout:
            if _alive_worker_nodes(ray) == 0:
                released_at = round(time.time() - start, 1)
                break
            time.sleep(0.5)
    finally:
        stop.set()
        watcher.join()
        ray.shutdown()
    first_row = {}
    for r in sorted(out, key=lambda r: r["done_at"]):
        first_row.setdefault(r["actor"], round(r["done_at"] - start, 1))
    counts = {a: sum(r["actor"] == a for r in out) for a in first_row}
    return {
        "rows_in": rows, "rows_out": len(out), "pool": {"min_size": min_size, "max_size": max_size},
        "actors_used": len(first_row), "nodes_used": len({r["node"] for r in out}),
        "actor_first_row_s": sorted(first_row.values()), "rows_per_actor": sorted(counts.values(), reverse=True),
        "max_alive_worker_nodes": max((n for _, n in timeline), default=0),
        "alive_worker_nodes_at_finish": nodes_at_finish, "stage_finished_s": round(finished, 1),
        "all_nodes_released_s": released_at,
        "timeline_s_nodes": _compress(timeline),
    }


def _compress(timeline: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """Only the moments the node count changed."""
    out: list[tuple[float, int]] = []
    for t, n in timeline:
        if not out or out[-1][1] != n:
            out.append((t, n))
    return out


def check(obs: dict[str, Any]) -> list[str]:
    """What the demo promises; an empty list when it all held."""
    problems = []
    if obs["rows_out"] != obs["rows_in"]:
        problems.append(f"{obs['rows_out']} rows out for {obs['rows_in']} in")
    if not obs["pool"]["min_size"] < obs["actors_used"] <= obs["pool"]["max_size"]:
        problems.append(f"{obs['actors_used']} actors processed rows; expected more than min_size "
                        f"{obs['pool']['min_size']} and at most max_size {obs['pool']['max_size']}")
    if obs["max_alive_worker_nodes"] < obs["actors_used"]:
        problems.append(f"at most {obs['max_alive_worker_nodes']} worker nodes alive for {obs['actors_used']} "
                        f"one-CPU actors")
    if obs["all_nodes_released_s"] is None:
        problems.append("idle worker nodes were not released within the timeout")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=24)
    ap.add_argument("--seconds-per-row", type=float, default=1.0)
    ap.add_argument("--min-size", type=int, default=1)
    ap.add_argument("--max-size", type=int, default=3)
    ap.add_argument("--release-timeout", type=float, default=90.0)
    args = ap.parse_args(argv)
    os.environ.update(_auth_off({}))  # the driver must agree with the cluster (read when ray starts)
    with local_autoscaling_cluster(max_workers=args.max_size) as address:
        obs = run_demo(address, args.rows, args.seconds_per_row, args.min_size, args.max_size,
                       args.release_timeout)
    problems = check(obs)
    print(json.dumps({**obs, "ok": not problems, "problems": problems}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
