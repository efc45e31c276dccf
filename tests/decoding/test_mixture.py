"""Mixture decoding (Eq. 3) against Hugging Face ``generate``, a no-cache recomputation, and itself."""

from __future__ import annotations

import math

import pytest
import torch

from rac.decoding import FROM_GROUNDED, FROM_UNGROUNDED, MixtureDecoder, SamplingParams, row_seed
from rac.decoding.mixture import filter_logits, sample_from_logits

GREEDY = {"do_sample": False, "stop_at_question": False}


def hf_greedy(model, tokenizer, prompts, max_new_tokens):
    """Hugging Face greedy ``generate`` on the same left-padded batch; each row cut after its EOS."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    rows = []
    for seq in out[:, enc["input_ids"].shape[1]:].tolist():
        rows.append(seq[: seq.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in seq else seq)
    return rows


def decoder(grounded_model, ungrounded_model, tokenizer, **params):
    return MixtureDecoder(grounded_model, ungrounded_model, tokenizer, SamplingParams(**params))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_extreme_alpha_is_greedy_generate_of_one_model(tokenizer, grounded_model, ungrounded_model, prompts, alpha):
    grounded_prompts, ungrounded_prompts = prompts
    dec = decoder(grounded_model, ungrounded_model, tokenizer, alpha=alpha, max_new_tokens=24, **GREEDY)
    samples = dec.generate(grounded_prompts, ungrounded_prompts, seeds=range(len(grounded_prompts)))

    # alpha = 0 is p_theta0 on the grounded prompts, alpha = 1 p_uncond on the ungrounded ones.
    model, model_prompts, other = ((grounded_model, grounded_prompts, ungrounded_model) if alpha == 0 else
                                   (ungrounded_model, ungrounded_prompts, grounded_model))
    expected = hf_greedy(model, tokenizer, model_prompts, 24)
    assert [s.token_ids for s in samples] == expected
    source = FROM_GROUNDED if alpha == 0 else FROM_UNGROUNDED
    assert all(s.provenance == [source] * len(s.token_ids) for s in samples)
    assert all(s.mixing_rate == alpha for s in samples)
    # The comparison has teeth: outputs vary within and across rows, and the other model differs.
    assert all(len(set(s.token_ids)) >= 5 for s in samples)
    assert len({tuple(s.token_ids) for s in samples}) == len(samples)
    assert hf_greedy(other, tokenizer, model_prompts, 24) != expected


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_extreme_alpha_never_runs_the_model_it_never_draws_from(tokenizer, grounded_model, ungrounded_model, prompts,
                                                                alpha):
    grounded_prompts, ungrounded_prompts = prompts
    seeds = [row_seed(3, str(i)) for i in range(len(grounded_prompts))]
    params = {"temperature": 1.0, "max_new_tokens": 16}
    # Both models run at an alpha a hair inside (0, 1), whose draws pick the same model at every step.
    near = 1e-12 if alpha == 0 else 1 - 1e-12
    expected = decoder(grounded_model, ungrounded_model, tokenizer, alpha=near, **params).generate(
        grounded_prompts, ungrounded_prompts, seeds)
    assert len({tuple(s.token_ids) for s in expected}) == len(seeds)
    unused = ungrounded_model if alpha == 0 else grounded_model
    hook = unused.register_forward_pre_hook(lambda *_: pytest.fail("ran the model that alpha never draws from"))
    try:
        got = decoder(grounded_model, ungrounded_model, tokenizer, alpha=alpha, **params).generate(
            grounded_prompts, ungrounded_prompts, seeds)
    finally:
        hook.remove()
    assert [(s.token_ids, s.provenance, s.text) for s in got] == [(s.token_ids, s.provenance, s.text)
                                                                  for s in expected]


def test_each_token_is_the_chosen_models_argmax_without_cache(tokenizer, grounded_model, ungrounded_model, prompts):
    """Recompute each step from scratch (no cache, no padding): the token a_t picked must be
    the argmax of that model, given its own prompt and the shared prefix of generated tokens."""
    grounded_prompts, ungrounded_prompts = prompts
    dec = decoder(grounded_model, ungrounded_model, tokenizer, alpha=0.5, max_new_tokens=16, **GREEDY)
    samples = dec.generate(grounded_prompts[:4], ungrounded_prompts[:4], seeds=[11, 12, 13, 14])
    models = {FROM_GROUNDED: (grounded_model, grounded_prompts), FROM_UNGROUNDED: (ungrounded_model,
                                                                                     ungrounded_prompts)}
    for row, sample in enumerate(samples):
        assert len(sample.provenance) == len(sample.token_ids) == 16
        assert 0 < sum(sample.provenance) < 16  # both models supplied tokens
        for t, (token, source) in enumerate(zip(sample.token_ids, sample.provenance, strict=True)):
            model, model_prompts = models[source]
            prompt_ids = tokenizer(model_prompts[row], return_tensors="pt")["input_ids"]
            ids = torch.cat([prompt_ids, torch.tensor([sample.token_ids[:t]], dtype=torch.long)], dim=1)
            with torch.no_grad():
                assert model(input_ids=ids).logits[0, -1].argmax().item() == token, (row, t, source)


def test_realised_mixing_rate_is_binomial_in_alpha(tokenizer, grounded_model, ungrounded_model, prompts):
    grounded_prompts, ungrounded_prompts = prompts
    rows = 4 * len(grounded_prompts)
    for alpha in (0.5, 0.2):
        dec = decoder(grounded_model, ungrounded_model, tokenizer, alpha=alpha, max_new_tokens=32,
                      stop_at_question=False, ignore_eos=True)
        samples = dec.generate(grounded_prompts * 4, ungrounded_prompts * 4, seeds=[row_seed(7, str(i))
                                                                                    for i in range(rows)])
        provenance = [a for s in samples for a in s.provenance]
        assert len(provenance) == rows * 32
        share = sum(provenance) / len(provenance)
        assert abs(share - alpha) <= 4 * math.sqrt(alpha * (1 - alpha) / len(provenance)), share
        for s in samples:
            assert len(s.provenance) == len(s.token_ids) and set(s.provenance) <= {0, 1}
            assert s.mixing_rate == pytest.approx(sum(s.provenance) / len(s.provenance))


def test_batched_equals_per_row(tokenizer, grounded_model, ungrounded_model, prompts):
    """Same row and seed, same sample, whatever the batch: alone, in a batch with left
    padding, in another order, in a smaller batch."""
    grounded_prompts, ungrounded_prompts = prompts
    seeds = [row_seed(0, f"row-{i}") for i in range(len(grounded_prompts))]
    dec = decoder(grounded_model, ungrounded_model, tokenizer, alpha=0.5, temperature=1.0, top_k=50,
                  max_new_tokens=32)
    batched = dec.generate(grounded_prompts, ungrounded_prompts, seeds)
    alone = [dec.generate([g], [u], [s])[0] for g, u, s in zip(grounded_prompts, ungrounded_prompts, seeds,
                                                                strict=True)]
    order = [5, 2, 7, 0, 3]
    shuffled = dec.generate([grounded_prompts[i] for i in order], [ungrounded_prompts[i] for i in order],
                            [seeds[i] for i in order])
    key = [(s.token_ids, s.provenance, s.text, s.finish_reason) for s in batched]
    assert key == [(s.token_ids, s.provenance, s.text, s.finish_reason) for s in alone]
    assert [key[i] for i in order] == [(s.token_ids, s.provenance, s.text, s.finish_reason) for s in shuffled]
    # Sampling is live: another seed gives another sample.
    other = dec.generate(grounded_prompts, ungrounded_prompts, [s + 1 for s in seeds])
    assert sum(o.token_ids != b.token_ids for o, b in zip(other, batched, strict=True)) >= len(seeds) - 1


def test_top_k_one_is_greedy(tokenizer, grounded_model, ungrounded_model, prompts):
    grounded_prompts, ungrounded_prompts = prompts
    seeds = list(range(len(grounded_prompts)))
    sampled = decoder(grounded_model, ungrounded_model, tokenizer, alpha=0.5, top_k=1, temperature=1.3,
                      max_new_tokens=16, stop_at_question=False).generate(grounded_prompts, ungrounded_prompts,
                                                                           seeds)
    greedy = decoder(grounded_model, ungrounded_model, tokenizer, alpha=0.5, max_new_tokens=16,
                     **GREEDY).generate(grounded_prompts, ungrounded_prompts, seeds)
    assert [(s.token_ids, s.provenance) for s in sampled] == [(g.token_ids, g.provenance) for g in greedy]


def _boost(model, token_ids, value=1e4):
    """Make ``model`` put (almost) all mass on ``token_ids`` from now on."""
    def hook(module, inputs, output):
        output = output.clone()
        output[..., token_ids] += value
        return output
    return model.get_output_embeddings().register_forward_hook(hook)


def test_row_stops_at_first_question_mark_of_either_model(tokenizer, grounded_model, ungrounded_model, prompts):
    grounded_prompts, ungrounded_prompts = prompts
    question = tokenizer.convert_tokens_to_ids("?")
    handle = _boost(ungrounded_model, [question])
    try:
        samples = decoder(grounded_model, ungrounded_model, tokenizer, alpha=0.3, max_new_tokens=32,
                          temperature=1.0).generate(grounded_prompts, ungrounded_prompts, seeds=range(8))
    finally:
        handle.remove()
    # The first token p_uncond supplies is '?', and the row ends there, '?' included.
    for s in samples:
        assert s.finish_reason == "question" and s.token_ids[-1] == question
        assert s.provenance == [0] * (len(s.provenance) - 1) + [1]
        assert s.text.endswith("?") and s.text.count("?") == 1
    assert len({len(s.token_ids) for s in samples}) > 1  # rows ended at different steps


def test_row_stops_at_eos_and_eos_is_not_in_the_text(tokenizer, grounded_model, ungrounded_model, prompts):
    grounded_prompts, ungrounded_prompts = prompts
    handle = _boost(grounded_model, [tokenizer.eos_token_id])
    try:
        samples = decoder(grounded_model, ungrounded_model, tokenizer, alpha=0.7, max_new_tokens=32,
                          stop_at_question=False).generate(grounded_prompts, ungrounded_prompts, seeds=range(8))
    finally:
        handle.remove()
    for s in samples:
        assert s.finish_reason == "eos" and s.token_ids[-1] == tokenizer.eos_token_id
        assert s.provenance[-1] == FROM_GROUNDED and set(s.provenance[:-1]) <= {FROM_UNGROUNDED}
        assert tokenizer.eos_token not in s.text


def test_sampler_draws_from_the_filtered_distribution():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 3.0])
    n = 20000
    uniforms = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # exact quantiles of U[0, 1)
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.0, 0, 0.8), (2.0, 4, 0.9)]:
        drawn = sample_from_logits(logits.expand(n, -1), uniforms, temperature, top_k, top_p)
        freq = torch.bincount(drawn, minlength=6).double() / n
        expected = filter_logits(logits.unsqueeze(0), temperature, top_k, top_p).softmax(-1)[0].double()
        assert torch.allclose(freq, expected, atol=2 / n), (temperature, top_k, top_p)
    # What the filters keep: top_k=3 -> ids 5, 0, 1; top_p=0.8 -> the smallest set reaching 0.8.
    kept = filter_logits(logits.unsqueeze(0), 1.0, 3, 1.0)[0].isfinite()
    assert kept.tolist() == [True, True, False, False, False, True]
    probs = logits.softmax(-1)
    kept_p = filter_logits(logits.unsqueeze(0), 1.0, 0, 0.8)[0].isfinite()
    assert probs[kept_p].sum() >= 0.8 and probs[kept_p].sum() - probs[kept_p].min() < 0.8


def test_sampler_ignores_float_noise_in_the_logits():
    """Batched and unbatched forwards differ by ~1e-6; the draw must not notice."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 512, generator=gen) * 3
    uniforms = torch.rand(4000, generator=gen, dtype=torch.float64)
    noisy = logits + torch.randn(logits.shape, generator=gen) * 1e-5
    same = sample_from_logits(logits, uniforms, 0.7, 50) == sample_from_logits(noisy, uniforms, 0.7, 50)
    assert same.double().mean() >= 0.999


def test_mismatched_inputs_are_refused(tokenizer, grounded_model, ungrounded_model):
    dec = decoder(grounded_model, ungrounded_model, tokenizer)
    with pytest.raises(ValueError, match="one of each per row"):
        dec.generate(["a", "b"], ["a"], [0, 1])
    assert dec.generate([], [], []) == []
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        SamplingParams(alpha=1.5)


def test_prompts_are_encoded_as_training_encodes_them(tokenizer, grounded_model, ungrounded_model, prompts):
    """A tokenizer whose post-processor appends a token by default: the decoder still feeds
    the prompt ids training used (rac.models.prompts.prompt_token_ids), so the samples match
    those of the plain tokenizer."""
    import copy

    from tokenizers.processors import TemplateProcessing

    appending = copy.deepcopy(tokenizer)
    appending.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"$A {tokenizer.eos_token}", special_tokens=[(tokenizer.eos_token, tokenizer.eos_token_id)])
    text = prompts[0][0]
    assert appending(text)["input_ids"] == tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    seeds = [row_seed(0, f"row-{i}") for i in range(3)]
    samples = [decoder(grounded_model, ungrounded_model, tok, alpha=0.5, max_new_tokens=12).generate(
        prompts[0][:3], prompts[1][:3], seeds) for tok in (tokenizer, appending)]
    assert [s.token_ids for s in samples[0]] == [s.token_ids for s in samples[1]]
