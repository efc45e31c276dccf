"""The machine description and the FLOP accounting of rac.machine."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rac import machine


def tiny_config(**kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, **kw)


def test_describe_machine_names_the_cpu_its_bf16_support_and_flags():
    info = machine.describe_machine()
    assert {"cpu_model", "cores", "cpu_flags", "mkldnn_bf16_supported", "torch_threads", "torch"} <= set(info)
    assert info["cpu_model"] and info["cores"] >= 1
    assert {"avx512_bf16", "amx_bf16", "avx512f"} <= set(info["cpu_flags"])
    assert info["mkldnn_bf16_supported"] == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_matmul_params_are_the_weights_of_every_linear_layer():
    config = tiny_config(tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert machine.matmul_params(config) == linear  # the LM head in, the embedding lookup out
    # Tied or not, the LM head multiplies: N does not change.
    assert machine.matmul_params(tiny_config(tie_word_embeddings=True)) == linear


def test_training_step_costs_three_forwards():
    n = machine.matmul_params(tiny_config())
    assert machine.forward_flops(n, 10) == 2 * n * 10
    assert machine.training_flops(n, 10) == 6 * n * 10 == 3 * machine.forward_flops(n, 10)


def test_matmul_peak_times_each_shape_of_the_model():
    shapes = machine.matmul_shapes(tiny_config(), tokens=16)
    assert {(s["k"], s["n"]) for s in shapes} == {(32, 32), (32, 16), (32, 80), (80, 32), (32, 96)}
    assert all(s["m"] == 16 for s in shapes)
    peak = machine.matmul_peak(shapes, "float32", min_time_s=0.01)
    assert peak["dtype"] == "float32" and peak["flops_per_s"] > 0 and len(peak["shapes"]) == len(shapes)
    # The model's rate lies between its slowest and its fastest shape.
    rates = [s["gflops_per_s"] for s in peak["shapes"]]
    assert min(rates) - 0.01 <= peak["gflops_per_s"] <= max(rates) + 0.01
    assert machine.share_of_peak(peak["flops_per_s"] / 4, peak) == 0.25


def test_the_lm_head_can_run_on_fewer_tokens():
    shapes = machine.matmul_shapes(tiny_config(), tokens=16, head_tokens=4)
    assert {(s["m"], s["k"], s["n"]) for s in shapes if s["n"] == 96} == {(4, 32, 96)}
    assert all(s["m"] == 16 for s in shapes if s["n"] != 96)


def test_a_second_measurement_keeps_each_shapes_faster_rate():
    shapes = machine.matmul_shapes(tiny_config(), tokens=8)
    first = machine.matmul_peak(shapes, min_time_s=0.01)
    fast = {**first, "shapes": [{**s, "flops_per_s": 1e15} for s in first["shapes"]]}
    both = machine.matmul_peak(shapes, min_time_s=0.01, earlier=fast)
    assert both["measurements"] == 2 and all(s["flops_per_s"] == 1e15 for s in both["shapes"])
    assert abs(both["flops_per_s"] - 1e15) < 1e6
