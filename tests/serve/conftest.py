"""Fixtures of the serving tests: a tiny model and an embedded BM25 index of the demo corpus."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer llama with a tokenizer trained on the demo data (loadable by from_pretrained)."""
    from rac.testing.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("serve-model") / "tiny-llama")


@pytest.fixture(scope="session")
def wordy_model_dir(tmp_path_factory) -> Path:
    """A tiny llama whose greedy answer to the 'jaguar' prompt holds a content word (weights drawn at std
    0.2, see rac.testing.tiny.tiny_causal_lm), for the unsupported-span test; the default tiny model repeats
    one punctuation token."""
    from rac.testing.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("serve-wordy-model") / "tiny-llama", weight_std=0.2)


@pytest.fixture(scope="session")
def demo_index_dir(tmp_path_factory) -> Path:
    """An embedded BM25 index of the demo passage corpus."""
    from rac.data import build_corpus, load_data
    from rac.retrieval import EmbeddedBM25Retriever

    return EmbeddedBM25Retriever.build(build_corpus(load_data("demo").documents),
                                       tmp_path_factory.mktemp("serve-index") / "bm25")


@pytest.fixture(scope="session")
def tiny_detector_dir(tmp_path_factory) -> Path:
    """An exported unsupported-span detector: a tiny BERT token classifier (random head) over the demo words."""
    from rac.evaluation.grounding import metric_words
    from rac.testing.tiny import demo_texts, save_tiny_encoder

    words = sorted(set(metric_words(" ".join(demo_texts()))))
    return save_tiny_encoder(tmp_path_factory.mktemp("serve-detector") / "detector", words, num_labels=2,
                             info={"max_length": 128, "threshold": 0.5})
