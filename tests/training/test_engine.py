"""TRL's trainers as the project runs them, in one process on a tiny model: the joint
objective against a hand computation, IPO against its formula, per-term logging, prompt
masking, and the length-grouped batch order."""

import math

import pytest
import torch
from trl import DPOConfig

from rac.testing.tiny import demo_texts, tiny_causal_lm, train_tiny_tokenizer
from rac.training.data import preference_examples, sft_examples
from rac.training.engine import LengthGroupedSampler, RACDPOTrainer

ROWS = [
    {"id": "a", "query": "jaguar", "passages": [{"text": "The jaguar is a big cat of the Amazon."}],
     "chosen": "do you mean the big cat of the amazon?", "rejected": "do you mean the car?", "question": "cat?"},
    {"id": "b", "query": "mercury", "passages": [{"text": "Mercury is the planet closest to the Sun."}],
     "chosen": "are you asking about the planet?", "rejected": "are you asking about a singer from queen?",
     "question": "planet?"},
    {"id": "c", "query": "python", "passages": [{"text": "Python is a programming language and a snake."}],
     "chosen": "the language or the snake?", "rejected": "do you want a pet?", "question": "snake?"},
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = train_tiny_tokenizer(demo_texts())
    policy, ref = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=2)
    pairs = preference_examples(ROWS, tok, max_length=128, max_answer_tokens=32)
    return tok, policy, ref, pairs, tmp_path_factory.mktemp("trl")


def dpo_trainer(setup, loss_type, gamma, beta):
    from datasets import Dataset

    tok, policy, ref, pairs, tmp = setup
    policy.train()  # the terms are logged under "train" (a tiny Llama has no dropout)
    args = DPOConfig(output_dir=str(tmp), loss_type=[loss_type, "sft"], loss_weights=[gamma, 1 - gamma], beta=beta,
                     use_cpu=True, bf16=False, report_to="none", activation_checkpointing=False, max_length=None)
    return RACDPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(pairs),
                         processing_class=tok, share_prompt=True)


def hand_logp(model, ids, n_answer):
    """Sum of log p(answer token | prefix) over the last ``n_answer`` tokens, one sequence at a time."""
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    logps = torch.log_softmax(logits.float(), -1)
    return sum(logps[t - 1, ids[t]] for t in range(len(ids) - n_answer, len(ids)))


def hand_terms(policy, ref, pairs):
    """Per pair: policy and reference log-probs of chosen and rejected, and the chosen length."""
    out = []
    for p in pairs:
        c, r = p["prompt_ids"] + p["chosen_ids"], p["prompt_ids"] + p["rejected_ids"]
        nc, nr = len(p["chosen_ids"]), len(p["rejected_ids"])
        with torch.no_grad():
            out.append({"pc": hand_logp(policy, c, nc), "pr": hand_logp(policy, r, nr), "rc": hand_logp(ref, c, nc),
                        "rr": hand_logp(ref, r, nr), "nc": nc, "nr": nr})
    return out


def batch_loss(trainer, pairs):
    batch = trainer.data_collator([{k: p[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for p in pairs])
    trainer._metrics["train"].clear()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_sigmoid_plus_sft_is_gamma_dpo_plus_one_minus_gamma_nll(setup, gamma):
    _, policy, ref, pairs, _ = setup
    beta = 0.1
    trainer = dpo_trainer(setup, "sigmoid", gamma, beta)
    loss = batch_loss(trainer, pairs)
    t = hand_terms(policy, ref, pairs)
    dpo = sum(-torch.nn.functional.logsigmoid(beta * ((x["pc"] - x["rc"]) - (x["pr"] - x["rr"]))) for x in t) / len(t)
    nll = -sum(x["pc"] for x in t) / sum(x["nc"] for x in t)
    assert loss == pytest.approx(gamma * float(dpo) + (1 - gamma) * float(nll), abs=1e-5)
    # Each term is logged apart: the SFT term always, the preference term where it has weight.
    logged = trainer._metrics["train"]
    assert logged["sft_loss"][-1] == pytest.approx(float(nll), abs=1e-5)
    if gamma > 0:
        assert logged["pref_loss"][-1] == pytest.approx(float(dpo), abs=1e-4)
    margin = sum(beta * ((x["pc"] - x["rc"]) - (x["pr"] - x["rr"])) for x in t) / len(t)
    assert logged["rewards/margins"][-1] == pytest.approx(float(margin), abs=1e-5)
    assert abs(float(margin)) > 1e-3  # policy and reference differ: the check above has teeth


def test_ipo_matches_its_formula(setup):
    _, policy, ref, pairs, _ = setup
    beta, gamma = 0.2, 0.5
    loss = batch_loss(dpo_trainer(setup, "ipo", gamma, beta), pairs)
    t = hand_terms(policy, ref, pairs)
    # IPO (Azar et al. 2023, Eq. 17) on per-token log-ratios: (h - 1/(2 tau))^2, tau = beta.
    ipo = sum((((x["pc"] - x["rc"]) / x["nc"] - (x["pr"] - x["rr"]) / x["nr"]) - 1 / (2 * beta)) ** 2
              for x in t) / len(t)
    nll = -sum(x["pc"] for x in t) / sum(x["nc"] for x in t)
    assert loss == pytest.approx(gamma * float(ipo) + (1 - gamma) * float(nll), abs=1e-4)


def test_prompt_tokens_are_masked(setup):
    tok, _, _, pairs, _ = setup
    p = pairs[0]
    assert p["chosen_ids"][-1] == tok.eos_token_id
    assert tok.decode(p["chosen_ids"][:-1]).strip() == ROWS[0]["chosen"]
    assert "Passages" in tok.decode(p["prompt_ids"]) and p["length"] == len(p["prompt_ids"]) + len(p["chosen_ids"])
    sft = sft_examples(ROWS, tok, grounded=False, max_length=128, max_answer_tokens=32)[0]
    assert "Passages" not in tok.decode(sft["input_ids"])
    answer = [label for label in sft["labels"] if label != -100]
    assert answer == sft["input_ids"][-len(answer):] and sft["labels"].count(-100) > 5
    assert tok.decode(answer[:-1]).strip() == ROWS[0]["question"]


def test_trainers_take_the_drivers_datasets_as_they_are(setup, monkeypatch):
    """TRL maps nothing over the tokenized rows: a map would hash TRL's function with dill,
    which prints its bytecode into every Ray Train worker's log."""
    from datasets import Dataset
    from trl import SFTConfig

    from rac.training.engine import RACSFTTrainer

    tok, policy, ref, pairs, tmp = setup

    def no_map(self, *args, **kwargs):
        raise AssertionError(f"TRL mapped {args[0] if args else kwargs.get('function')} over the training data")

    monkeypatch.setattr(Dataset, "map", no_map)
    sft = Dataset.from_list(sft_examples(ROWS, tok, grounded=True, max_length=128, max_answer_tokens=32))
    args = SFTConfig(output_dir=str(tmp / "sft"), completion_only_loss=True, use_cpu=True, bf16=False,
                     report_to="none", activation_checkpointing=False, max_length=None)
    trainer = RACSFTTrainer(model=policy, args=args, train_dataset=sft, processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert batch["labels"][0].tolist() == sft[0]["labels"]
    assert dpo_trainer(setup, "sigmoid", 0.5, 0.1).train_dataset.column_names == list(pairs[0])


def test_length_grouped_order_is_a_function_of_seed_and_epoch():
    lengths = [int(x) for x in torch.randint(10, 300, (200,), generator=torch.Generator().manual_seed(0))]
    sampler = LengthGroupedSampler(lengths, batch_size=4, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(200)) and list(LengthGroupedSampler(lengths, 4, seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    # Padding: the longest-minus-each-length sum over batches is far below a random order's.
    def waste(order):
        return sum(max(lengths[i] for i in order[k:k + 4]) * 4 - sum(lengths[i] for i in order[k:k + 4])
                   for k in range(0, len(order), 4))
    shuffled = torch.randperm(200, generator=torch.Generator().manual_seed(1)).tolist()
    assert waste(first) < 0.2 * waste(shuffled)
    assert math.isfinite(waste(first))
