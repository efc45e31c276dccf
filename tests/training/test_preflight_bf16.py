"""The training preflight warns about bf16 on a CPU without it, and the run proceeds as asked."""

import dataclasses
import logging

import pytest

from rac import machine
from rac.data.config import DataConfig
from rac.data.prepare import prepare_data
from rac.data.schema import records_to_table
from rac.models import ModelConfig
from rac.testing.tiny import save_tiny_model
from rac.training import SFTConfig, preflight
from rac.training.config import ScalingSection
from rac.training.data import example_tokens


@pytest.fixture
def sft_inputs(tmp_path):
    import pyarrow.parquet as pq

    loaded, _ = prepare_data(DataConfig())
    (tmp_path / "retrieved").mkdir()
    pq.write_table(records_to_table([{**r, "passages": []} for r in loaded.records]),
                   tmp_path / "retrieved" / "part-0.parquet")
    return tmp_path / "retrieved", save_tiny_model(tmp_path / "tiny-model")


def test_preflight_warns_with_the_ratio_and_proceeds(sft_inputs, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(machine, "bf16_supported", lambda: False)
    monkeypatch.setattr(machine, "bf16_speed_ratio", lambda: 0.0143)
    rows, model = sft_inputs
    cfg = SFTConfig(input_dir=str(rows), output_dir=str(tmp_path / "out"),
                    model=ModelConfig(path=str(model), dtype="bfloat16"),
                    scaling=ScalingSection(num_workers=1, check_resources=False))
    with caplog.at_level(logging.WARNING, logger="rac"):
        usable = preflight(cfg)
    assert usable  # proceeds: the rows to train on
    assert "model.dtype is bfloat16 on a CPU without native bf16 matmuls" in caplog.text and "0.0143x" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rac"):
        preflight(dataclasses.replace(cfg, model=ModelConfig(path=str(model), dtype="float32")))
    assert "bf16" not in caplog.text


def test_step_tokens_count_a_shared_prompt_once():
    sft = {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, -100, 4, 5]}
    pair = {"prompt_ids": [1] * 10, "chosen_ids": [2] * 3, "rejected_ids": [3] * 4}
    assert example_tokens(sft) == (5, 2)
    assert example_tokens(pair, share_prompt=True) == (10 + 3 + 4, 7)
    assert example_tokens(pair, share_prompt=False) == (2 * 10 + 3 + 4, 7)


def test_a_step_costs_6_n_tokens_with_the_head_on_labelled_tokens_only():
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2)
    n, head = machine.matmul_params(config), 16 * 100
    tokens, labelled = example_tokens({"prompt_ids": [1] * 10, "chosen_ids": [2] * 3, "rejected_ids": [3] * 4})
    assert machine.training_step_flops(config, tokens) == 6 * n * 17
    assert machine.training_step_flops(config, tokens, labelled) == 6 * (n - head) * 17 + 6 * head * 7
