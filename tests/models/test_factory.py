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


def test_dtype_auto_is_the_models_own_dtype_where_the_device_computes_it(monkeypatch):
    from rac import machine
    from rac.models.factory import resolve_dtype

    monkeypatch.setattr(machine, "bf16_supported", lambda: False)
    monkeypatch.setattr(torch_cuda(), "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch_cuda(), "is_available", lambda: True)
    # inference: the stored dtype, where the device has it
    assert [resolve_dtype("auto", True, stored) for stored in ("bfloat16", "float16", "float32")] == \
        ["bfloat16", "float16", "float32"]
    assert [resolve_dtype("auto", False, stored) for stored in ("bfloat16", "float16", "float32")] == \
        ["float32", "float32", "float32"]  # this CPU has no native bf16
    monkeypatch.setattr(machine, "bf16_supported", lambda: True)
    assert resolve_dtype("auto", False, "bfloat16") == "bfloat16"
    monkeypatch.setattr(torch_cuda(), "is_bf16_supported", lambda: False)  # a V100 or T4
    assert resolve_dtype("auto", True, "bfloat16") == "float16"
    assert resolve_dtype("auto", True) == "float32"  # training's compute precision: bf16 where the device has it
    assert resolve_dtype("float16", True, "bfloat16") == "float16"  # what is asked for, as asked


def torch_cuda():
    import torch

    return torch.cuda


def test_inference_loads_a_bf16_model_as_the_rule_says(tmp_path, monkeypatch):
    import torch

    from rac import machine
    from rac.models.factory import load_causal_lm, stored_dtype
    from rac.testing.tiny import save_tiny_model, tiny_causal_lm, train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(["a small text to train on", "another one"], vocab_size=300)
    tiny_causal_lm(tokenizer).to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    fp32 = save_tiny_model(tmp_path / "fp32", tokenizer=tokenizer)
    assert (stored_dtype(tmp_path / "bf16"), stored_dtype(fp32)) == ("bfloat16", "float32")
    monkeypatch.setattr(machine, "bf16_supported", lambda: True)
    assert load_causal_lm(tmp_path / "bf16").dtype == torch.bfloat16
    assert load_causal_lm(fp32).dtype == torch.float32
    monkeypatch.setattr(machine, "bf16_supported", lambda: False)
    assert load_causal_lm(tmp_path / "bf16").dtype == torch.float32
    assert load_causal_lm(tmp_path / "bf16", "bfloat16").dtype == torch.bfloat16


def test_cuda_for_an_actor_that_reserves_no_gpu_is_refused_naming_its_num_gpus():
    from rac.config import from_dict
    from rac.decoding.config import NegativesConfig
    from rac.evaluation.config import EvaluateConfig

    with pytest.raises(ConfigError, match=r"^device is 'cuda' but pool.num_gpus is 0: a Ray actor sees only the "
                                          r"GPUs it reserves; set pool.num_gpus to 1"):
        from_dict(NegativesConfig, {"device": "cuda"})
    with pytest.raises(ConfigError, match=r"^device is 'cuda' but score_pool.num_gpus is 0"):
        from_dict(EvaluateConfig, {"device": "cuda", "pool": {"num_gpus": 1}})
    assert from_dict(NegativesConfig, {"device": "cuda", "pool": {"num_gpus": 0.5}}).device == "cuda"


def test_flash_attention_without_its_package_is_refused_by_name(monkeypatch):
    import importlib.util

    from rac.config import from_dict
    from rac.evaluation.config import EvaluateConfig
    from rac.training.config import SFTConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^model.attn_implementation is flash_attention_2 but the flash-attn "
                                          r"package is not installed; .* or set model.attn_implementation: sdpa$"):
        from_dict(SFTConfig, {"model": {"attn_implementation": "flash_attention_2"}})
    with pytest.raises(ConfigError, match=r"^attn_implementation is flash_attention_2 but"):
        from_dict(EvaluateConfig, {"attn_implementation": "flash_attention_2"})
    assert from_dict(SFTConfig, {"model": {"attn_implementation": "eager"}}).model.attn_implementation == "eager"
