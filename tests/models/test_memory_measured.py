"""The memory plan's estimates against memory measured on CPU (a small Llama, float32).

Measured with torch's profiler (:func:`rac.models.memory.cpu_allocations`): every allocation and
free of the CPU allocator inside the window, summed in time order (the peak of that sum, plus what
was allocated before the window).

Stated tolerances:
- activations (what autograd keeps after the forward): within 10% of the estimate, sdpa and eager;
  with gradient checkpointing, at least what is kept and at most that plus one layer recomputed;
- model states after an AdamW step (weights, gradients, two moments) equal DeepSpeed's ZeRO-0
  figure less the 4 bytes a parameter of DDP's buckets, which a single process does not allocate;
- the peak of a whole training step (the second, with the optimizer state in place): the plan's
  sum is an upper bound, at most 1.5x the measured peak (the backward pass frees activations as
  it allocates gradients, so both are never held at full size together).
"""

import json

import pytest
import torch

from rac.models.memory import activation_bytes, cpu_allocations, lm_head_bytes, model_shape, model_states_bytes

ROWS, TOKENS = 4, 256


def _config(attention: str = "sdpa"):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                       num_key_value_heads=4, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False,
                       attn_implementation=attention)


def _model(config, checkpointing: bool = False):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).train()
    if checkpointing:
        model.activation_checkpointing_enable()
    return model


def _shape(config):
    return model_shape(json.loads(config.to_json_string()))


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_activations_within_ten_percent_of_what_autograd_keeps(attention, one_torch_thread):
    config = _config(attention)
    model = _model(config)
    x = torch.randint(0, config.vocab_size, (ROWS, TOKENS))
    out = {}
    _, kept = cpu_allocations(lambda: out.update(logits=model(input_ids=x).logits))
    kept -= out["logits"].numel() * 4  # the output, not an activation
    estimate = activation_bytes(_shape(config), ROWS, TOKENS, "float32", False, attention)
    assert abs(estimate - kept) <= 0.1 * kept, (estimate, kept)


def test_checkpointed_activations_bound_what_is_kept(one_torch_thread):
    config = _config()
    model = _model(config, checkpointing=True)
    x = torch.randint(0, config.vocab_size, (ROWS, TOKENS))
    out = {}
    _, kept = cpu_allocations(lambda: out.update(logits=model(input_ids=x).logits))
    kept -= out["logits"].numel() * 4
    shape = _shape(config)
    estimate = activation_bytes(shape, ROWS, TOKENS, "float32", True)
    one_layer = (activation_bytes(shape, ROWS, TOKENS, "float32", False) - kept) / shape.layers
    assert kept <= estimate <= 1.1 * (kept + one_layer), (estimate, kept)
    assert estimate < 0.5 * activation_bytes(shape, ROWS, TOKENS, "float32", False)


def test_model_states_and_the_peak_of_a_training_step(one_torch_thread):
    config = _config()
    model = _model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, config.vocab_size, (ROWS, TOKENS))
    params = sum(p.numel() for p in model.parameters())

    def step():
        model(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)

    _, states_after_first = cpu_allocations(step)  # gradients and AdamW's moments, kept
    states = 4 * params + states_after_first
    shape = _shape(config)
    assert shape.params == params
    ds_states = model_states_bytes(params, shape.largest_layer_params, zero_stage=0, workers=1)
    assert ds_states == 20 * params
    assert abs((ds_states - 4 * params) - states) <= 0.01 * states, (ds_states, states)

    peak, _ = cpu_allocations(step)
    peak += states
    # The plan of this step: states, activations, and the LM head (here over every position:
    # a plain forward, not the training forward that keeps to the answer's tokens).
    estimate = ds_states + activation_bytes(shape, ROWS, TOKENS, "float32", False) + \
        lm_head_bytes(shape, ROWS * TOKENS)
    assert peak <= estimate <= 1.5 * peak, (estimate, peak)
