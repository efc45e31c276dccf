"""A Ray cluster of several nodes on this machine, started with ``ray start`` as a user starts one:
a head that runs no stage work (``num-cpus 0``, as ``cluster/cluster.yaml`` has it) and two worker
nodes, each with its own ports and temp dir, token authentication on (Ray 2.60's default). Each
node runs in a process group of its own; only those groups are stopped."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rac.testing.es_server import free_port, wait_http
from tests.conftest import REPO
from tests.e2e.procs import descendants

BIN = Path(sys.executable).parent
WORKER_NODES = 2


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    temp_dir: Path


@dataclass
class RayCluster:
    url: str
    gcs: str
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)
    started: int = 0  # worker nodes started so far

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """A ``ray`` CLI command against this cluster (``ray job ...``, ``ray list ...``)."""
        return subprocess.run([str(BIN / "ray"), *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def submit(self, *entrypoint: str, wait: bool = True, submission_id: str | None = None,
               timeout: float = 1200) -> subprocess.CompletedProcess:
        """``ray job submit --runtime-env cluster/runtime_env.yaml -- ...``, as the README writes it.
        A submit right after the dashboard answers can find no agent yet: retried."""
        args = ["job", "submit", f"--address={self.url}", "--runtime-env", "cluster/runtime_env.yaml"]
        args += [f"--submission-id={submission_id}"] if submission_id else []
        args += [] if wait else ["--no-wait"]
        for attempt in range(5):
            proc = self.ray(*args, "--", *entrypoint, timeout=timeout)
            if "No available agent" not in proc.stdout + proc.stderr or attempt == 4:
                return proc
            time.sleep(3)
        return proc

    def job_status(self, submission_id: str) -> str:
        """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED, from the job REST API."""
        request = urllib.request.Request(f"{self.url}/api/jobs/{submission_id}",
                                         headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["status"]

    def job_logs(self, submission_id: str) -> str:
        return self.ray("job", "logs", f"--address={self.url}", submission_id).stdout

    def node_ids(self) -> dict[str, str]:
        """{node id: "head" | "worker"} of the alive nodes."""
        return {n["node_id"]: "head" if n["is_head_node"] else "worker" for n in self._alive()}

    def node_name(self, node_id: str) -> str:
        """The name this fixture gave the node (each worker node carries a resource of its name)."""
        for n in self._alive():
            if n["node_id"] == node_id:
                return "head" if n["is_head_node"] else next(r for r in n["resources_total"] if r.startswith("node_"))
        raise KeyError(node_id)

    def _alive(self) -> list[dict]:
        proc = self.ray("list", "nodes", f"--address={self.url}", "--format=json", "--filter", "state=ALIVE")
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout) if proc.stdout.lstrip().startswith("[") else []  # "No resource ..." at start

    def add_worker(self) -> Node:
        """Start one more worker node (2 CPUs) and wait until it has joined."""
        self.started += 1
        name = f"node_w{self.started}"  # a name, resource and temp dir no other node had
        node = _start(name, [f"--address={self.gcs}", "--num-cpus=2", f"--resources={{\"{name}\": 1}}"],
                      self.env, self.nodes[0].temp_dir.parent / name)
        self.nodes.append(node)
        deadline = time.monotonic() + 90
        while not any(name in n["resources_total"] for n in self._alive()):
            assert time.monotonic() < deadline, f"{name} did not join"
            time.sleep(1)
        return node

    def lose_node(self, name: str) -> None:
        """A node lost as a machine is: its raylet SIGKILLed, then the rest of its processes."""
        node = next(n for n in self.nodes if n.name == name)
        for pid, command in descendants(node.proc.pid):
            if "raylet" in command:
                os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        stop_node(node, sig=signal.SIGKILL)
        self.nodes.remove(node)

    def runtime_resources(self) -> list[Path]:
        """Every node's Ray package directories (``runtime_resources``): code copies, never outputs."""
        return [p for node in self.nodes for p in node.temp_dir.glob("session_*/runtime_resources")]


def _port_flags() -> list[str]:
    base = 20000 + 200 * secrets.randbelow(200)  # a worker port range of this node only
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--min-worker-port={base}", f"--max-worker-port={base + 199}", "--node-ip-address=127.0.0.1",
            "--object-store-memory=150000000", "--block"]


def _start(name: str, args: list[str], env: dict[str, str], temp_dir: Path) -> Node:
    proc = subprocess.Popen([str(BIN / "ray"), "start", *args, *_port_flags(), f"--temp-dir={temp_dir}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return Node(name, proc, temp_dir)


def stop_node(node: Node, sig: int = signal.SIGTERM) -> None:
    """Stop one node: its own process group (``ray start --block`` and what it started)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.proc.pid, sig)
    try:
        node.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # `ray start --block` often outwaits SIGTERM; the group is all ours
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_cluster():
    token = secrets.token_hex(16)
    root = Path(tempfile.mkdtemp(prefix="rac-cluster-"))
    # The job's `python` must be this environment's, as on a cluster whose image has the project.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    url = f"http://127.0.0.1:{dashboard}"
    cluster = RayCluster(url=url, gcs=f"127.0.0.1:{gcs}", env=env)
    try:
        cluster.nodes.append(_start("head", [
            "--head", f"--port={gcs}", "--num-cpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}"], env, root / "head"))
        wait_http(url + "/api/version", timeout=90, proc=cluster.nodes[0].proc)
        for _ in range(WORKER_NODES):
            cluster.add_worker()
        yield cluster
    finally:
        for node in reversed(cluster.nodes):
            stop_node(node)
        shutil.rmtree(root, ignore_errors=True)
