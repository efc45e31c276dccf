"""Tiny models for the decoding tests: one tokenizer, two causal LMs that share it."""

from __future__ import annotations

import pytest

from rac.data import load_data
from rac.models import build_prompt
from rac.testing.tiny import demo_texts, tiny_causal_lm, train_tiny_tokenizer

#: Weight scale of the test models (see rac.testing.tiny.tiny_causal_lm).
WEIGHT_STD = 0.2


def sharpened_lm(tokenizer, seed: int):
    return tiny_causal_lm(tokenizer, seed=seed, weight_std=WEIGHT_STD)


@pytest.fixture(scope="session", autouse=True)
def _tiny_models_use_one_thread(one_torch_thread):
    """Every test of this folder runs tiny models in-process (see tests/conftest.py)."""


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
