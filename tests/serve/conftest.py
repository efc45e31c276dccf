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
def demo_index_dir(tmp_path_factory) -> Path:
    """An embedded BM25 index of the demo passage corpus."""
    from rac.data import build_corpus, load_data
    from rac.retrieval import EmbeddedBM25Retriever

    return EmbeddedBM25Retriever.build(build_corpus(load_data("demo").documents),
                                       tmp_path_factory.mktemp("serve-index") / "bm25")
