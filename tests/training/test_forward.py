"""The training forward (rac.training.forward) against TRL's own fused forward: the same
per-token log-probs and gradients, with the LM head on labelled tokens only and each
pair's prompt run once."""

import pytest
import torch
from trl import DPOConfig
from trl.trainer.utils import add_fused_lm_head

from rac.testing.tiny import demo_texts, tiny_causal_lm, train_tiny_tokenizer
from rac.training import forward as training_forward
from rac.training.data import preference_examples
from rac.training.engine import RACDPOTrainer
from tests.training.test_engine import ROWS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from datasets import Dataset

    tok = train_tiny_tokenizer(demo_texts())
    policy = tiny_causal_lm(tok, seed=3, weight_std=0.2)
    pairs = preference_examples(ROWS, tok, max_length=128, max_answer_tokens=32)
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("fwd")), use_cpu=True, bf16=False, report_to="none",
                     activation_checkpointing=False, max_length=None)
    # TRL's fused forward alone, on the same weights, is the reference.
    reference = tiny_causal_lm(tok, seed=3, weight_std=0.2)
    add_fused_lm_head(reference, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    trainer = RACDPOTrainer(model=policy, ref_model=tiny_causal_lm(tok, seed=4), args=args, share_prompt=True,
                            train_dataset=Dataset.from_list(pairs), processing_class=tok)
    batch = trainer.data_collator([{k: p[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for p in pairs])
    return trainer, batch, reference


def fused(model, batch):
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    model.zero_grad()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, labels=labels,
                fused_lm_head=True)
    out.log_probs.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("share_prompt", [True, False])
def test_log_probs_and_gradients_match_trls_forward(tiny, monkeypatch, share_prompt):
    trainer, batch, reference = tiny
    ours = trainer.model
    ours.train(), reference.train()
    calls = []
    monkeypatch.setattr(training_forward, "_shared_prompt_hidden",
                        lambda *a: calls.append(a[1].shape) or SHARED(*a))
    ours._rac_share_prompt = share_prompt
    got, got_grads = fused(ours, batch)
    want, want_grads = fused(reference, batch)
    assert len(calls) == (1 if share_prompt else 0)
    assert torch.equal(got.label_mask, want.label_mask) and got.label_mask.sum() > 20
    for field in ("log_probs", "entropy", "mean_logits"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), atol=1e-5, rtol=1e-5)
    assert torch.equal(got.is_top1, want.is_top1)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        # Float rounding differs (summation order): within 1e-6 of the gradient's scale.
        torch.testing.assert_close(got_grads[name], grad, atol=1e-6 * float(grad.abs().max()), rtol=1e-4, msg=name)


def test_pairs_without_a_shared_prompt_take_the_full_forward(tiny, monkeypatch):
    trainer, batch, _ = tiny
    calls = []
    monkeypatch.setattr(training_forward, "_shared_prompt_hidden", lambda *a: calls.append(1) or SHARED(*a))
    trainer.model._rac_share_prompt = True
    fused(trainer.model, batch)
    assert calls == [1]
    swapped = dict(batch, input_ids=batch["input_ids"].clone())
    swapped["input_ids"][0, 0] = swapped["input_ids"][0, 0] + 1  # chosen 0's prompt no longer its rejected's
    out, _ = fused(trainer.model, swapped)
    assert calls == [1] and torch.isfinite(out.log_probs).all()


SHARED = training_forward._shared_prompt_hidden


def test_sft_runs_the_lm_head_on_the_question_only(tiny, monkeypatch):
    from datasets import Dataset
    from trl import SFTConfig

    from rac.training.data import sft_examples
    from rac.training.engine import RACSFTTrainer

    trainer, _, reference = tiny
    tok = trainer.processing_class
    model = tiny_causal_lm(tok, seed=3, weight_std=0.2)  # the reference's weights
    rows = sft_examples(ROWS, tok, grounded=True, max_length=128, max_answer_tokens=32)
    args = SFTConfig(output_dir=str(trainer.args.output_dir) + "-sft", use_cpu=True, bf16=False, report_to="none",
                     activation_checkpointing=False, max_length=None, completion_only_loss=True)
    sft = RACSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = sft.data_collator([sft.train_dataset[i] for i in range(len(rows))])
    scored = []
    real = training_forward._log_prob_output
    monkeypatch.setattr(training_forward, "_log_prob_output",
                        lambda m, h, t, mask: scored.append(int((t != -100).sum())) or real(m, h, t, mask))
    with torch.no_grad():
        loss = sft.compute_loss(model, batch)
        want = reference(**batch, fused_lm_head=True).loss
    assert scored == [int((batch["labels"][:, 1:] != -100).sum())] and scored[0] < batch["input_ids"].numel() / 3
    assert float(loss) == pytest.approx(float(want), abs=1e-5)
