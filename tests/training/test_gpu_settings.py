"""The training settings a GPU run needs: a user's DeepSpeed config merged over ours and checked
before any work, gradient checkpointing as a setting (and what it turns off), the dtype the
base weights load in, and the export in the base model's dtype."""

from __future__ import annotations

import json
import logging

import pytest

from rac.config import ConfigError, from_dict
from rac.training.config import RACConfig, SFTConfig

OFFLOAD = {"zero_optimization": {"offload_optimizer": {"device": "cpu", "pin_memory": True},
                                 "offload_param": {"device": "cpu"}, "reduce_bucket_size": 5e7}}


def test_a_users_deepspeed_config_is_merged_over_ours(tmp_path):
    cfg = from_dict(SFTConfig, {"deepspeed": {"zero_stage": 3, "config": OFFLOAD}})
    merged = cfg.deepspeed.merged()
    zero = merged["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"]  # ours, kept
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True} and zero["reduce_bucket_size"] == 5e7
    assert merged["train_micro_batch_size_per_gpu"] == "auto"  # still from per_worker_batch_size
    assert cfg.deepspeed.offload() == {"optimizer": "cpu", "param": "cpu"}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(OFFLOAD))
    from_file = from_dict(SFTConfig, {"deepspeed": {"zero_stage": 3, "config": str(path)}})
    assert from_file.deepspeed.merged() == merged
    assert from_dict(SFTConfig, {}).deepspeed.merged() is None  # ZeRO 0: no DeepSpeed at all


def test_the_merged_config_reaches_the_trainer(tmp_path, monkeypatch):
    import trl

    from rac.training.worker import trainer_arguments

    cfg = from_dict(SFTConfig, {"deepspeed": {"zero_stage": 2, "config": {"zero_optimization": {
        "offload_optimizer": {"device": "cpu"}}}}, "gradient_checkpointing": True})
    with monkeypatch.context() as m:  # TRL's config would need the process group Ray Train starts
        m.setattr(trl, "SFTConfig", dict)
        args = trainer_arguments(cfg, str(tmp_path), "float32", has_eval=False)
    assert args["deepspeed"] == cfg.deepspeed.merged()
    assert args["deepspeed"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert args["activation_checkpointing"] is True
    assert trainer_arguments(from_dict(SFTConfig, {}), str(tmp_path), "float32", False).activation_checkpointing \
        is False  # TRL's default is on; ours is the config's


@pytest.mark.parametrize(("deepspeed", "message"), [
    ({"zero_stage": 2, "config": {"train_micro_batch_size_per_gpu": 8}},
     r"deepspeed.config.train_micro_batch_size_per_gpu is set by this config's 'per_worker_batch_size'"),
    ({"zero_stage": 2, "config": {"bf16": {"enabled": True}}}, r"deepspeed.config.bf16 is set by this config's "
                                                               r"'model.dtype'"),
    ({"zero_stage": 2, "config": {"zero_optimization": {"stage": 3}}},
     r"zero_optimization.stage is 3 but deepspeed.zero_stage is 2; set the stage with deepspeed.zero_stage"),
    ({"zero_stage": 2, "config": {"zero_optimization": {"offload_param": {"device": "cpu"}}}},
     r"offload_param needs ZeRO stage 3"),
    ({"zero_stage": 3, "config": {"zero_optimization": {"offload_param": {"device": "gpu"}}}},
     r"not a valid DeepSpeed config: zero_optimization.offload_param.device: Input should be 'none', 'cpu' or"),
    ({"zero_stage": 3, "config": {"zero_optimization": {"overlap_com": True}}},
     r"zero_optimization.overlap_com: Extra inputs are not permitted"),
    ({"zero_stage": 0, "config": OFFLOAD}, r"deepspeed.config is set but deepspeed.zero_stage is 0"),
    ({"zero_stage": 3, "config": "no-such-ds.json"}, r"deepspeed.config no-such-ds.json cannot be read"),
])
def test_a_deepspeed_config_that_would_fail_is_refused_before_any_work(deepspeed, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(SFTConfig, {"deepspeed": deepspeed})


def test_gradient_checkpointing_is_a_setting_and_turns_share_prompt_off_saying_so(caplog):
    with pytest.raises(ConfigError, match="trainer_args.gradient_checkpointing: set it with this config's own key "
                                          "'gradient_checkpointing'"):
        from_dict(SFTConfig, {"trainer_args": {"gradient_checkpointing": True}})
    with caplog.at_level(logging.INFO, logger="rac.training.config"):
        assert from_dict(RACConfig, {"gradient_checkpointing": True}).shares_prompt() is False
    assert "share_prompt is off: gradient_checkpointing is on" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rac.training.config"):
        assert from_dict(RACConfig, {}).shares_prompt() is True
    assert not caplog.text


def test_the_base_loads_in_the_compute_dtype_only_where_no_fp32_master_is_needed():
    from rac.training.worker import weights_dtype

    full = from_dict(SFTConfig, {})
    lora = from_dict(SFTConfig, {"model": {"lora": {"enabled": True}}})
    zero3 = from_dict(SFTConfig, {"deepspeed": {"zero_stage": 3}})
    assert [weights_dtype(c, "bfloat16") for c in (full, lora, zero3)] == ["float32", "bfloat16", "bfloat16"]
    assert weights_dtype(lora, "float32") == "float32"


def test_the_export_is_written_in_the_base_models_dtype(tmp_path):
    """A float32-trained model of a bf16 base is exported in bf16, its prompt format beside it."""
    import torch

    from rac.models.factory import load_tokenizer, stored_dtype
    from rac.models.prompts import read_prompt_format
    from rac.testing.tiny import tiny_causal_lm, train_tiny_tokenizer
    from rac.training.worker import export_model

    tokenizer = train_tiny_tokenizer(["a small text to train on", "another one"], vocab_size=300)
    base = tmp_path / "base"
    tiny_causal_lm(tokenizer).to(torch.bfloat16).save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    trained = tiny_causal_lm(tokenizer, seed=3)  # float32, as full fine-tuning holds it

    class Accelerator:
        def wait_for_everyone(self):
            pass

    class Trainer:  # what export_model uses of transformers' Trainer
        processing_class, accelerator = load_tokenizer(base), Accelerator()

        def save_model(self, path):
            trained.save_pretrained(path)

    cfg = from_dict(SFTConfig, {"model": {"path": str(base)}})
    export_model(Trainer(), cfg, tmp_path / "model", rank=0)
    assert stored_dtype(tmp_path / "model") == "bfloat16" and read_prompt_format(tmp_path / "model") == "plain"
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    assert exported.dtype == torch.bfloat16
    expected = trained.model.embed_tokens.weight.to(torch.bfloat16)
    assert torch.equal(exported.model.embed_tokens.weight, expected)
