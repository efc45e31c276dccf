"""The whole pipeline as a ``ray job submit`` on a cluster of three ``ray start`` nodes (a head
that runs no stage work and two worker nodes, conftest), with the demo config's relative paths
and a storage root, exactly as the README writes it (tiny models, short training)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rac.pipeline import MANIFEST
from rac.testing.tiny import save_tiny_model
from tests.conftest import REPO
from tests.e2e.conftest import ALL_STAGES
from tests.e2e.test_chaos import compare_runs

pytestmark = pytest.mark.slow  # three pipeline runs on three nodes: minutes, not seconds

#: The training workers and actors of these stages record their node (rac.placement).
PLACED = {"sft_grounded": "train_worker", "sft_ungrounded": "train_worker", "train_rac": "train_worker",
          "negatives": "negatives_actor", "evaluate": "generate_actor"}


def pipeline_args(storage: Path) -> list[str]:
    args = ["python", "-m", "jobs.pipeline", "--config", "configs/demo.yaml", "--storage", str(storage),
            "--base_model", "outputs/models/tiny", "--stages", f"[{', '.join(ALL_STAGES)}]", "--show", "0",
            "--evaluate.fluency_model", "null", "--evaluate.bootstrap_samples", "200",
            "--evaluate.embedding_model", "null", "--retrieve_pool.batch_size", "10",
            "--negatives.pool.batch_size", "4", "--sft.max_steps", "60", "--sft.save_steps", "10",
            "--rac.max_steps", "2"]
    return args


def storage_with_base_model(root: Path) -> Path:
    """A storage root holding the base model, where a user puts theirs (relative in the config)."""
    save_tiny_model(root / "outputs" / "models" / "tiny")
    return root


@pytest.fixture(scope="module")
def reference_run(ray_cluster, tmp_path_factory):
    """The pipeline submitted once and left to finish: (storage root, the submit's output)."""
    storage = storage_with_base_model(tmp_path_factory.mktemp("reference"))
    start = time.monotonic()
    proc = ray_cluster.submit(*pipeline_args(storage))
    print(f"multi-node pipeline: {time.monotonic() - start:.0f} s")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return storage, proc


def test_the_pipeline_runs_on_the_worker_nodes_and_writes_only_to_storage(ray_cluster, reference_run):
    storage, proc = reference_run
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    run = storage / "outputs" / "demo"
    for stage in ALL_STAGES:
        assert (run / stage / MANIFEST).is_file(), stage
        config = run / stage / "config.yaml"
        if config.is_file():  # what each stage recorded: absolute paths under the storage root
            text = config.read_text()
            assert text.count("outputs/") == text.count(f"{storage}/outputs/") > 0, text
    # Nothing but code in any node's copy of the job's working directory.
    resources = ray_cluster.runtime_resources()
    assert resources
    for folder in resources:
        written = [p for pattern in ("outputs", "*.parquet", "*.safetensors", MANIFEST, "run_info.json")
                   for p in folder.rglob(pattern)]
        assert not written, written
    # Training workers and actors on the worker nodes; the driver on the head.
    nodes = ray_cluster.node_ids()
    workers = {n for n, kind in nodes.items() if kind == "worker"}
    where = {}
    for stage, role in PLACED.items():
        placed = json.loads((run / stage / "run_info.json").read_text())["nodes"]
        assert nodes.get(placed["driver"]) == "head", (stage, placed)
        assert placed[role] and set(placed[role]) <= workers, (stage, placed, nodes)
        where[stage] = placed[role]
    print("placement:", json.dumps(where))


def test_serve_deploy_on_the_cluster_reads_the_model_and_index_from_storage(ray_cluster, reference_run, tmp_path):
    import urllib.request

    import yaml

    from rac.testing.es_server import free_port

    storage = reference_run[0]
    config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    port = free_port()
    # One proxy (every node of this cluster shares 127.0.0.1, so one port fits one proxy only).
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["runtime_env"]["env_vars"]["RAC_STORAGE"] = str(storage)  # as serve/config.yaml's comment says
    assert not Path(app["args"]["model_path"]).is_absolute()  # outputs/demo/train_rac/model, on the storage
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    serve_bin = [str(Path(sys.executable).parent / "serve")]
    deployed = subprocess.run([*serve_bin, "deploy", str(tmp_path / "serve.yaml"), f"--address={ray_cluster.url}"],
                              env=ray_cluster.env, capture_output=True, text=True, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, subprocess.run(
                [*serve_bin, "status", f"--address={ray_cluster.url}"], env=ray_cluster.env, capture_output=True,
                text=True).stdout[-3000:]
            time.sleep(1)
        request = urllib.request.Request(url + "/v1/clarify", data=json.dumps({"query": "jaguar"}).encode(),
                                          headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            body = json.loads(r.read())
        assert body["model"] == "model" and body["question"]
        assert body["passages"] and all("jaguar" in p["text"].lower() for p in body["passages"])
    finally:
        subprocess.run([*serve_bin, "shutdown", "-y", f"--address={ray_cluster.url}"], env=ray_cluster.env,
                       capture_output=True, timeout=120)


def _wait_for(condition, what: str, cluster, submission_id: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        status = cluster.job_status(submission_id)
        assert status in ("RUNNING", "PENDING"), \
            f"{what}: job {status}\n" + cluster.job_logs(submission_id)[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _node_of(placement_dir: Path) -> str | None:
    records = sorted(placement_dir.glob("*.json")) if placement_dir.is_dir() else []
    return json.loads(records[-1].read_text())["node_id"] if records else None


def test_a_stopped_job_resubmitted_on_a_cluster_losing_nodes_ends_as_an_uninterrupted_one(
        ray_cluster, reference_run, tmp_path):
    """``ray job stop`` during grounded SFT, then the same submit; while that run goes on, a worker
    node is lost during ungrounded SFT and another during negatives (one run for both claims:
    a pipeline run is minutes on CI's 2 cores)."""
    storage = storage_with_base_model(tmp_path / "stopped")
    run = storage / "outputs" / "demo"
    first, second = "rac-stop-1", "rac-resume-1"
    assert ray_cluster.submit(*pipeline_args(storage), wait=False, submission_id=first).returncode == 0
    _wait_for(lambda: _checkpointed(run, "sft_grounded"), "a checkpoint of sft_grounded", ray_cluster, first)
    stop = ray_cluster.ray("job", "stop", f"--address={ray_cluster.url}", first)
    assert stop.returncode == 0, stop.stderr
    while ray_cluster.job_status(first) not in ("STOPPED", "FAILED", "SUCCEEDED"):
        time.sleep(0.5)
    assert ray_cluster.job_status(first) == "STOPPED"
    assert "stopped: got SIGTERM" in ray_cluster.job_logs(first)
    assert not (run / "sft_grounded" / MANIFEST).exists(), "stopped after the stage finished: stop sooner"
    assert (run / "retrieve" / MANIFEST).is_file()

    assert ray_cluster.submit(*pipeline_args(storage), wait=False, submission_id=second).returncode == 0
    lost = []
    # During training: a node holding a training worker, once the stage has a checkpoint.
    _wait_for(lambda: _checkpointed(run, "sft_ungrounded"), "a checkpoint of sft_ungrounded", ray_cluster, second)
    lost.append(ray_cluster.node_name(_node_of(run / "sft_ungrounded" / "placement")))
    ray_cluster.lose_node(lost[-1])
    ray_cluster.add_worker()  # as an autoscaler or a node group would replace it
    # During negatives: the node of the decoding actor, once it has started.
    _wait_for(lambda: _node_of(run / "negatives" / "placement"), "the negatives actor", ray_cluster, second)
    lost.append(ray_cluster.node_name(_node_of(run / "negatives" / "placement")))
    ray_cluster.lose_node(lost[-1])
    ray_cluster.add_worker()
    while ray_cluster.job_status(second) in ("RUNNING", "PENDING"):
        time.sleep(1)
    logs = ray_cluster.job_logs(second)
    assert ray_cluster.job_status(second) == "SUCCEEDED", logs[-4000:]
    assert logs.count("unchanged, skipped") == 2  # index and retrieve, finished before the stop
    # Training resumed from checkpoints: the stopped stage's, and the one on the lost node.
    assert re.search(r"resumes from \S*/sft_grounded/", logs) and re.search(r"resumes from \S*/sft_ungrounded/", logs)
    assert len(json.loads((run / "negatives" / "run_info.json").read_text())["nodes"]["negatives_actor"]) == 2
    rows_lost, mismatches = compare_runs(reference_run[0] / "outputs" / "demo", run, ALL_STAGES)
    print(f"stop, resubmit, node loss ({lost}): rows lost {rows_lost}, mismatches {mismatches}")
    assert rows_lost == 0 and not mismatches, mismatches


def _checkpointed(run: Path, stage: str) -> bool:
    return bool(list((run / stage / "ray" / stage).glob("checkpoint_*/checkpoint/trainer_state.json")))


