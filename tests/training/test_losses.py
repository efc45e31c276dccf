"""The joint objective against a hand computation on a fixed batch."""

import math

import pytest
import torch

from rac.testing.tiny import demo_texts, tiny_causal_lm, train_tiny_tokenizer
from rac.training.data import IGNORE_INDEX, pad_batch, preference_examples, sft_examples
from rac.training.losses import completion_logps, rac_loss, sft_loss

ROWS = [
    {"id": "a", "query": "jaguar", "passages": [{"text": "The jaguar is a big cat of the Amazon."}],
     "chosen": "do you mean the big cat of the amazon?", "rejected": "do you mean the car?", "question": "cat?"},
    {"id": "b", "query": "mercury", "passages": [{"text": "Mercury is the planet closest to the Sun."}],
     "chosen": "are you asking about the planet?", "rejected": "are you asking about a singer from queen?",
     "question": "planet?"},
]


@pytest.fixture(scope="module")
def setup():
    tok = train_tiny_tokenizer(demo_texts())
    policy, ref = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=2)
    pairs = preference_examples(ROWS, tok, max_length=128, max_answer_tokens=32)
    return tok, policy, ref, pairs


def hand_logp(model, input_ids, labels):
    """Sum of log p(token | prefix) over labelled positions, one sequence at a time."""
    logits = model(input_ids=torch.tensor([input_ids])).logits[0]
    total, count = 0.0, 0
    for t in range(1, len(input_ids)):
        if labels[t] != IGNORE_INDEX:
            total = total + torch.log_softmax(logits[t - 1], -1)[labels[t]]
            count += 1
    return total, count


def batch_terms(tok, policy, ref, pairs, gamma, beta):
    seqs = [p["chosen_input_ids"] for p in pairs] + [p["rejected_input_ids"] for p in pairs]
    labels = [p["chosen_labels"] for p in pairs] + [p["rejected_labels"] for p in pairs]
    batch = pad_batch(seqs, labels, tok.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    logps, counts = completion_logps(policy(**inputs).logits, batch["labels"])
    with torch.no_grad():
        ref_logps, _ = completion_logps(ref(**inputs).logits, batch["labels"])
    n = len(pairs)
    return rac_loss(logps[:n], logps[n:], ref_logps[:n], ref_logps[n:], counts[:n], gamma, beta)


def hand_terms(policy, ref, pairs, beta):
    dpo, nll, tokens = 0.0, 0.0, 0
    for p in pairs:
        pc, n_c = hand_logp(policy, p["chosen_input_ids"], p["chosen_labels"])
        pr, _ = hand_logp(policy, p["rejected_input_ids"], p["rejected_labels"])
        with torch.no_grad():
            rc, _ = hand_logp(ref, p["chosen_input_ids"], p["chosen_labels"])
            rr, _ = hand_logp(ref, p["rejected_input_ids"], p["rejected_labels"])
        z = beta * ((pc - rc) - (pr - rr))
        dpo = dpo - torch.log(1 / (1 + torch.exp(-z)))
        nll, tokens = nll - pc, tokens + n_c
    return dpo / len(pairs), nll / tokens


def test_prompt_tokens_are_masked(setup):
    tok, _, _, pairs = setup
    p = pairs[0]
    answer = [t for t in p["chosen_labels"] if t != IGNORE_INDEX]
    assert answer[-1] == tok.eos_token_id
    assert tok.decode(answer[:-1]).strip() == ROWS[0]["chosen"]
    assert p["chosen_input_ids"][-len(answer):] == answer
    assert p["chosen_input_ids"][: -len(answer)] == p["rejected_input_ids"][: -len([t for t in p["rejected_labels"]
                                                                                     if t != IGNORE_INDEX])]
    sft = sft_examples(ROWS, tok, grounded=False, max_length=128, max_answer_tokens=32)[0]
    assert "Passages" not in tok.decode(sft["input_ids"]) and sft["labels"].count(IGNORE_INDEX) > 5


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.5, 1.0])
def test_loss_is_gamma_dpo_plus_one_minus_gamma_nll(setup, gamma):
    tok, policy, ref, pairs = setup
    beta = 0.1
    terms = batch_terms(tok, policy, ref, pairs, gamma, beta)
    dpo, nll = hand_terms(policy, ref, pairs, beta)
    assert float(terms["dpo_loss"]) == pytest.approx(float(dpo), abs=1e-5)
    assert float(terms["sft_loss"]) == pytest.approx(float(nll), abs=1e-5)
    assert float(terms["loss"]) == pytest.approx(gamma * float(dpo) + (1 - gamma) * float(nll), abs=1e-5)
    # At the start the policy is not the reference: the margin is a real number, accuracy a fraction.
    assert 0.0 <= float(terms["reward_accuracy"]) <= 1.0 and math.isfinite(float(terms["reward_margin"]))


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_gamma_0_is_the_sft_gradient_and_gamma_1_the_dpo_gradient(setup):
    tok, policy, ref, pairs = setup
    beta = 0.2
    sft_only = _grads(policy, batch_terms(tok, policy, ref, pairs, 0.0, beta)["loss"])
    chosen = pad_batch([p["chosen_input_ids"] for p in pairs], [p["chosen_labels"] for p in pairs], tok.pad_token_id)
    nll = sft_loss(policy(input_ids=chosen["input_ids"], attention_mask=chosen["attention_mask"]).logits,
                   chosen["labels"])
    for a, b in zip(sft_only, _grads(policy, nll), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    dpo_only = _grads(policy, batch_terms(tok, policy, ref, pairs, 1.0, beta)["loss"])
    hand_dpo, _ = hand_terms(policy, ref, pairs, beta)
    for a, b in zip(dpo_only, _grads(policy, hand_dpo), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(sft_only, dpo_only, strict=True))
