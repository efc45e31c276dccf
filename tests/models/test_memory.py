"""The memory plan on 8B- and 70B-shaped models (AutoConfig from a dict, no weights): what it
refuses, what it accepts, and what it says would fit."""

import dataclasses
import json

import pytest

from rac.config import ConfigError, from_dict
from rac.decoding.config import NegativesConfig
from rac.decoding.memory import memory_plan as negatives_plan
from rac.models.memory import GB, check_plan, kv_cache_bytes, model_shape, model_states_bytes
from rac.serving.config import ServeConfig
from rac.serving.memory import memory_plan as serve_plan
from rac.training.config import RACConfig, SFTConfig
from rac.training.memory import memory_plan as training_plan
from tests.conftest import REPO

LLAMA_8B = json.loads((REPO / "configs" / "models" / "llama-3.1-8b.json").read_text())
LLAMA_70B = {**LLAMA_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
             "num_hidden_layers": 80}


@pytest.fixture(scope="module")
def shape_8b():
    return model_shape(LLAMA_8B)


@pytest.fixture(scope="module")
def shape_70b():
    return model_shape(LLAMA_70B)


def test_shapes_count_the_public_parameter_numbers(shape_8b, shape_70b):
    assert shape_8b.params == 8_030_261_248 and shape_70b.params == 70_553_706_496
    assert shape_8b.largest_layer_params == 128256 * 4096  # the (untied) embedding
    assert (shape_8b.layers, shape_8b.kv_width, shape_8b.dtype) == (32, 8 * 128, "bfloat16")


def test_model_states_are_deepspeeds_own_estimates():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    p, largest = 8_000_000_000, 500_000_000
    assert model_states_bytes(p, largest, 0, 8) == 20 * p  # plain DDP: nothing sharded
    assert model_states_bytes(p, largest, 2, 8) == estimate_zero2_model_states_mem_needs(
        p, num_gpus_per_node=8, cpu_offload=False)[1]
    assert model_states_bytes(p, largest, 3, 8, offload_optimizer=True) == estimate_zero3_model_states_mem_needs(
        p, largest, num_gpus_per_node=8, cpu_offload=True, cpu_offload_params=False)[1]


def _negatives(**kw):
    return from_dict(NegativesConfig, {"pool": {"num_gpus": 1, "batch_size": 16, "gpu_memory_gb": 24}, **kw})


def test_the_old_a10g_plan_for_two_fp32_8b_models_is_refused_with_what_fits(shape_8b):
    from rac.config import ActorPoolConfig

    cfg = _negatives(dtype="float32")
    plan = negatives_plan(cfg, shape_8b, shape_8b)
    assert not plan.fits and plan.total > 64 * GB  # two 8B models x 4 bytes
    with pytest.raises(ConfigError) as e:
        check_plan(plan, "pool.gpu_memory_gb")
    message = str(e.value)
    assert "negatives does not fit the GPU" in message and "24 GB GPU" in message and "pool.gpu_memory_gb" in message
    assert "grounded weights" in message and "ungrounded weights" in message
    # bf16 halves the weights, but 32 GB still exceeds an A10G: the fix named is a bigger GPU.
    assert "a GPU of 80 GB or more (A100-80G, H100)" in message and "dtype: bfloat16" not in message
    # In bf16 on an 80 GB GPU it fits.
    ok = negatives_plan(dataclasses.replace(cfg, dtype="bfloat16", pool=ActorPoolConfig(
        num_gpus=1, batch_size=16, gpu_memory_gb=80)), shape_8b, shape_8b)
    assert ok.fits and 32 * GB < ok.total < 40 * GB


def test_actors_sharing_a_gpu_count_twice(shape_8b):
    whole = negatives_plan(_negatives(), shape_8b, shape_8b).total
    half = negatives_plan(_negatives(pool={"num_gpus": 0.5, "batch_size": 16, "gpu_memory_gb": 80}),
                          shape_8b, shape_8b).total
    assert half == 2 * whole


def _sft(**kw):
    scaling = {"num_workers": 8, "use_gpu": True, "gpu_memory_gb": 80, **kw.pop("scaling", {})}
    return from_dict(SFTConfig, {"model": {"dtype": "bfloat16"}, "max_length": 384, "per_worker_batch_size": 4,
                                 **kw, "scaling": scaling})


def test_70b_full_fine_tuning_on_8x80gb_without_zero3_is_refused_naming_what_fits(shape_70b):
    cfg = from_dict(SFTConfig, {"model": {"dtype": "bfloat16"}, "max_length": 384, "per_worker_batch_size": 1,
                                "scaling": {"num_workers": 8, "use_gpu": True, "gpu_memory_gb": 80},
                                "deepspeed": {"zero_stage": 2}})
    plan = training_plan(cfg, shape_70b)
    assert not plan.fits
    fixes = dict(plan.suggestions)
    assert "deepspeed.zero_stage: 3 with zero_optimization.offload_optimizer {device: cpu}" in fixes
    assert "model.lora.enabled: true with deepspeed.zero_stage: 3" in fixes
    assert "deepspeed.zero_stage: 3" not in fixes  # 18 bytes x 70B / 8 alone does not fit 80 GB
    assert "gradient_checkpointing: true" not in fixes  # activations are not the problem
    with pytest.raises(ConfigError, match="offload_optimizer"):
        check_plan(plan, "scaling.gpu_memory_gb")
    # The named fix, applied, is accepted.
    fixed = from_dict(SFTConfig, {"model": {"dtype": "bfloat16"}, "max_length": 384, "per_worker_batch_size": 1,
                                  "scaling": {"num_workers": 8, "use_gpu": True, "gpu_memory_gb": 80},
                                  "deepspeed": {"zero_stage": 3, "config": {"zero_optimization": {
                                      "offload_optimizer": {"device": "cpu"}}}}})
    assert training_plan(fixed, shape_70b).fits


def test_lora_holds_the_frozen_base_in_the_compute_dtype(shape_8b):
    full = training_plan(_sft(), shape_8b)
    lora = training_plan(from_dict(SFTConfig, {"model": {"dtype": "bfloat16", "lora": {"enabled": True}},
                                              "scaling": {"num_workers": 8, "use_gpu": True,
                                                          "gpu_memory_gb": 24}}), shape_8b)
    frozen = dict(lora.items)["frozen base (bfloat16)"]
    assert frozen == 2 * shape_8b.params
    assert dict(full.items)["model states (DeepSpeed ZeRO-0 estimator, 8.03B trainable)"] == 20 * shape_8b.params
    assert lora.total < full.total / 5


def test_checkpointing_and_batch_shrink_activations_and_dpo_holds_both_rows(shape_8b):
    def activations(plan):
        return next(b for what, b in plan.items if what.startswith("activations"))

    base = activations(training_plan(_sft(), shape_8b))
    assert activations(training_plan(_sft(gradient_checkpointing=True), shape_8b)) < base / 5
    assert activations(training_plan(_sft(per_worker_batch_size=2), shape_8b)) == pytest.approx(base / 2, rel=0.01)
    rac = from_dict(RACConfig, {"model": {"dtype": "bfloat16"}, "max_length": 384, "per_worker_batch_size": 4,
                                "scaling": {"num_workers": 8, "use_gpu": True}})
    assert activations(training_plan(rac, shape_8b)) == pytest.approx(2 * base, rel=0.01)
    assert not any("reference" in w for w, _ in training_plan(rac, shape_8b).items)
    with_ref = training_plan(dataclasses.replace(rac, precompute_ref_logps=False), shape_8b)
    assert dict(with_ref.items)["reference model (bfloat16)"] > 2 * shape_8b.params


def test_a_plan_on_cpu_or_of_unknown_gpu_size_is_not_checked(shape_8b):
    cpu = training_plan(SFTConfig(), shape_8b)
    assert cpu.fits and cpu.verdict() == "CPU: not checked"
    unknown = training_plan(_sft(scaling={"gpu_memory_gb": None}), shape_8b)
    assert unknown.gpu_gb is None and unknown.fits  # this machine has no GPU and no Ray


def test_serving_an_8b_model_fits_an_l4_in_bf16_not_in_fp32(shape_8b):
    gen = {"deployment": {"num_gpus": 1, "gpu_memory_gb": 24}}
    ok = serve_plan(from_dict(ServeConfig, {"dtype": "auto", "generator": gen}), shape_8b)
    assert ok.fits and ok.total > 16 * GB
    kv = kv_cache_bytes(shape_8b, "bfloat16", 16, 512 + 64)
    assert dict(ok.items)["KV cache 16 x 576 tok"] == kv
    refused = serve_plan(from_dict(ServeConfig, {"dtype": "float32", "generator": gen}), shape_8b)
    assert not refused.fits and "GPU of 48 GB or more" in refused.refusal("generator.deployment.gpu_memory_gb")
