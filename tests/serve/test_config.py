"""The serving config: the checked-in Serve YAML, the RayService that embeds it, and the checks
``build_app`` runs before any replica starts. No Ray needed."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rac.config import ConfigError, from_dict
from rac.serving.config import ServeConfig
from tests.conftest import REPO

SERVE_CONFIG = REPO / "serve" / "config.yaml"
RAYSERVICE = REPO / "cluster" / "rayservice.yaml"


def _serve_config() -> dict:
    return yaml.safe_load(SERVE_CONFIG.read_text())


def _embedded_config() -> dict:
    docs = [d for d in yaml.safe_load_all(RAYSERVICE.read_text()) if d]
    (service,) = [d for d in docs if d.get("kind") == "RayService"]
    return yaml.safe_load(service["spec"]["serveConfigV2"]), service


def test_serve_config_is_a_valid_serve_deploy_config():
    from ray.serve.schema import ServeDeploySchema

    raw = _serve_config()
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.http_options.host == "127.0.0.1", "bind loopback unless configured otherwise"
    (app,) = schema.applications
    assert app.import_path == "serve.app:build_app"
    # The args are exactly what build_app parses: no unknown key, no impossible value.
    cfg = from_dict(ServeConfig, app.args)
    assert cfg.generator.deployment.max_ongoing_requests >= cfg.generator.max_batch_size
    assert cfg.retriever.backend == "embedded"


def test_the_commented_detector_block_is_valid_once_uncommented():
    import re

    text = SERVE_CONFIG.read_text()
    assert _serve_config()["applications"][0]["args"].get("detector") is None  # off as shipped
    on = re.sub(r"^(\s*)# (detector:|  (path|threshold|precision):)", r"\1\2", text, flags=re.M)
    args = yaml.safe_load(on)["applications"][0]["args"]
    cfg = from_dict(ServeConfig, args)
    assert cfg.detector.path == "outputs/demo/train_detector/model" and cfg.detector.precision == "int8"


def test_import_path_names_build_app():
    import importlib

    module, _, attr = _serve_config()["applications"][0]["import_path"].partition(":")
    assert getattr(importlib.import_module(module), attr).__name__ == "build_app"


def test_rayservice_embeds_the_serve_config_with_token_auth():
    from ray.serve.schema import ServeDeploySchema

    embedded, service = _embedded_config()
    assert service["apiVersion"] == "ray.io/v1"
    assert service["spec"]["rayClusterConfig"]["authOptions"]["mode"] == "token"
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    ServeDeploySchema.model_validate(embedded)
    from_dict(ServeConfig, embedded["applications"][0]["args"])
    # Only the documented differences: host, paths on the volume, key from the mounted secret, and the
    # generator on a GPU (device, the replica's GPU and its size).
    local = _serve_config()
    allowed = copy.deepcopy(embedded)
    assert allowed["http_options"].pop("host") == "0.0.0.0"
    local["http_options"].pop("host")
    for cfg in (allowed, local):
        args = cfg["applications"][0]["args"]
        args.pop("model_path")
        args["retriever"].pop("index_dir")
        args.pop("auth")
        args.pop("device", None)
        for key in ("num_gpus", "gpu_memory_gb"):
            args["generator"]["deployment"].pop(key, None)
    assert allowed == local
    auth = embedded["applications"][0]["args"]["auth"]
    assert auth["required"] is True and auth["api_key_file"].startswith("/etc/rac/")
    mounts = {m["mountPath"] for m in
              service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
              ["volumeMounts"]}
    assert str(Path(auth["api_key_file"]).parent) in mounts


def test_batch_size_above_max_ongoing_requests_is_refused():
    with pytest.raises(ConfigError, match="max_ongoing_requests .* must be at least generator.max_batch_size"):
        from_dict(ServeConfig, {"generator": {"max_batch_size": 32, "deployment": {"max_ongoing_requests": 8}}})


@pytest.mark.parametrize(("args", "message"), [
    ({"generater": {}}, "unknown config key 'generater'. Did you mean 'generator'"),
    ({"generator": {"max_batch_size": "16"}}, "generator.max_batch_size must be an integer"),
    ({"ingress": {"deployment": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}}, "max_replicas"),
    ({"limits": {"max_top_k": 2}}, "limits.max_top_k .* must be >= retriever.top_k"),
    ({"ingress": {"generation_time_smoothing": 0}}, r"ingress.generation_time_smoothing must be in \(0, 1\], got 0"),
])
def test_bad_args_fail_with_what_to_change(args, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ServeConfig, args)


def test_deployments_get_the_configured_replicas_resources_and_batching():
    from serve.app import deployments

    cfg = from_dict(ServeConfig, {
        "generator": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05, "deployment": {
            "num_cpus": 1.5, "max_ongoing_requests": 24,
            "autoscaling": {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 12}}},
        "ingress": {"deployment": {"num_cpus": 0.25, "max_ongoing_requests": 99}},
    })
    ingress, generator = deployments(cfg)
    assert ingress.name == "ClarifyIngress"
    assert ingress.max_ongoing_requests == 99 and ingress.ray_actor_options["num_cpus"] == 0.25
    assert generator.name == "QuestionGenerator"
    assert generator.max_ongoing_requests == 24 and generator.ray_actor_options["num_cpus"] == 1.5
    # Serve takes the autoscaling section as it is given to Deployment.options (no public getter).
    autoscaling = cfg.generator.deployment.to_serve()["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"], autoscaling["target_ongoing_requests"]) == \
        (1, 3, 12)
    assert cfg.generator.max_batch_size == 8 and cfg.generator.batch_wait_timeout_s == 0.05


def test_build_app_fails_fast_on_missing_model_or_index(tmp_path, tiny_model_dir):
    from serve.app import build_app

    with pytest.raises(ConfigError, match="not a Hugging Face model directory .*run `make run` first"):
        build_app({"model_path": str(tmp_path / "nothing")})
    with pytest.raises(ConfigError, match="holds no embedded BM25 index"):
        build_app({"model_path": str(tiny_model_dir), "retriever": {"index_dir": str(tmp_path / "no-index")}})
    # The tiny model has 1024 positions: a prompt budget that leaves no room for the answer is refused.
    with pytest.raises(ConfigError, match="exceeds the model's max_position_embeddings"):
        build_app({"model_path": str(tiny_model_dir), "generator": {"max_prompt_tokens": 1000}})


def test_configured_detector_missing_or_broken_fails_at_build_naming_it(tmp_path, tiny_model_dir, demo_index_dir,
                                                                         tiny_detector_dir):
    import shutil

    from serve.app import build_app

    args = {"model_path": str(tiny_model_dir), "retriever": {"index_dir": str(demo_index_dir)}}
    missing = tmp_path / "no-detector"
    with pytest.raises(ConfigError, match=f"detector.path {missing} is not a Hugging Face model directory"):
        build_app({**args, "detector": {"path": str(missing)}})
    broken = tmp_path / "broken"
    shutil.copytree(tiny_detector_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=f"detector.path {broken} has no weights file"):
        build_app({**args, "detector": {"path": str(broken)}})
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=f"detector.path {broken} is broken"):
        build_app({**args, "detector": {"path": str(broken)}})
    # A detector whose files are there but do not load stops the replica, naming it.
    from rac.detector import DetectorDirError, UnsupportedSpanDetector

    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_detector_dir, truncated)
    (truncated / "model.safetensors").write_bytes(b"cut short")
    with pytest.raises(DetectorDirError, match=f"detector.path {truncated} is broken: it does not load"):
        UnsupportedSpanDetector(truncated, key="detector.path")


def test_relative_paths_resolve_against_the_storage_root(tmp_path):
    from rac.storage import resolve_storage

    cfg = resolve_storage(from_dict(ServeConfig, {"model_path": "models/m", "retriever": {"index_dir": "idx"},
                                                  "auth": {"api_key_file": "secret/key"}}), tmp_path)
    assert cfg.model_path == str(tmp_path / "models" / "m")
    assert cfg.retriever.index_dir == str(tmp_path / "idx")
    assert cfg.auth.api_key_file == str(tmp_path / "secret" / "key")


def test_cuda_serving_where_no_gpu_is_visible_is_refused_naming_the_setting(tiny_model_dir, monkeypatch):
    import torch

    from rac.serving.generator import QuestionGenerator
    from serve.app import build_app

    with pytest.raises(ConfigError, match=r"^device is 'cuda' but generator.deployment.num_gpus is 0: a Ray actor "
                                          r"sees only the GPUs it reserves"):
        build_app({"model_path": str(tiny_model_dir), "device": "cuda"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a replica that reserved a GPU but sees none
    with pytest.raises(ConfigError, match=r"^device is 'cuda' but no GPU is visible to this actor"):
        QuestionGenerator(tiny_model_dir, device="cuda", num_gpus=1)
    generator = QuestionGenerator(tiny_model_dir, device="auto", num_gpus=1)
    assert generator.device == "cpu" and next(generator.model.parameters()).device.type == "cpu"
