"""The model-directory check and device resolution every stage shares."""

from __future__ import annotations

import pytest

from rac.config import ConfigError
from rac.models import ModelConfig, ModelDirError, check_model_dir, resolve_device


def test_a_missing_model_directory_names_the_key_and_what_makes_it(tmp_path):
    with pytest.raises(ModelDirError, match=rf"^grounded_model {tmp_path} is not a Hugging Face model directory "
                                            r"\(no config.json\); run `make run` first$"):
        check_model_dir(tmp_path, "grounded_model", "run `make run` first")
    with pytest.raises(ConfigError, match="^model.path .* is not a Hugging Face model directory"):
        ModelConfig(path=str(tmp_path)).check_exists()
    (tmp_path / "config.json").write_text("{}")
    assert check_model_dir(str(tmp_path), "grounded_model", "") == tmp_path


def test_device_resolution(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # whatever this machine has
    assert (resolve_device("auto", 1), resolve_device("cpu", 1)) == ("cpu", "cpu")
    with pytest.raises(ConfigError, match="device is 'cuda' but no GPU is visible"):
        resolve_device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (resolve_device("auto", 1), resolve_device("auto", 0), resolve_device("cuda", 0)) == \
        ("cuda", "cpu", "cuda")
