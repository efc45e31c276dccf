"""Tiny models for the decoding tests: one tokenizer, two causal LMs that share it."""

from __future__ import annotations

import pytest
import torch

from rac.data import load_data
from rac.models import build_prompt
from rac.testing.tiny import demo_texts, tiny_causal_lm, train_tiny_tokenizer

#: Weight scale of the test models. At the default init (std 0.02) a tiny random LM is
#: nearly uniform and its greedy output repeats one token; at 0.2 its next token depends
#: on the context, so the tests can tell the two models and the positions apart.
WEIGHT_STD = 0.2


def sharpened_lm(tokenizer, seed: int):
    model = tiny_causal_lm(tokenizer, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * WEIGHT_STD)
    return model.eval()


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The test models are too small to gain from threads, and on a busy 2-core machine
    spinning OpenMP threads slow them down tenfold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizer():
    return train_tiny_tokenizer(demo_texts())


@pytest.fixture(scope="session")
def grounded_model(tokenizer):
    return sharpened_lm(tokenizer, seed=1)


@pytest.fixture(scope="session")
def ungrounded_model(tokenizer):
    return sharpened_lm(tokenizer, seed=2)


@pytest.fixture(scope="session")
def prompts(tokenizer):
    """(grounded, ungrounded) prompts of 8 demo queries, of different lengths on both sides,
    so that batches need left padding for both models."""
    data = load_data("demo")
    docs = [d["text"] for d in data.documents]
    records = data.records[::12][:8]
    grounded = [build_prompt(tokenizer, r["query"], docs[i: i + 1 + i % 3], grounded=True, max_tokens=320).text
                for i, r in enumerate(records)]
    ungrounded = [build_prompt(tokenizer, r["query"], grounded=False).text for r in records]
    return grounded, ungrounded


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tokenizer, grounded_model, ungrounded_model):
    """Both models saved with the shared tokenizer: (grounded_dir, ungrounded_dir)."""
    root = tmp_path_factory.mktemp("models")
    dirs = []
    for name, model in (("grounded", grounded_model), ("ungrounded", ungrounded_model)):
        model.save_pretrained(str(root / name))
        tokenizer.save_pretrained(str(root / name))
        dirs.append(root / name)
    return tuple(dirs)
