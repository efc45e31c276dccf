"""Tiny local models and a retrieval output for the evaluation tests. Nothing is downloaded."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from rac.data import load_data
from rac.data.schema import records_to_table
from rac.evaluation.grounding import metric_words
from rac.testing.tiny import demo_texts, tiny_causal_lm, train_tiny_tokenizer

#: Weight scale of the tiny LMs (see rac.testing.tiny.tiny_causal_lm).
WEIGHT_STD = 0.2

#: Labels of the tiny NLI model; "entailment" is neither first nor lower-case, so the
#: scorer must read its index from label2id.
NLI_LABELS = {"contradiction": 0, "neutral": 1, "ENTAILMENT": 2}


@pytest.fixture(scope="session", autouse=True)
def _tiny_models_use_one_thread(one_torch_thread):
    """Every test of this folder runs tiny models in-process (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def lm_tokenizer():
    return train_tiny_tokenizer(demo_texts())


def _save_lm(path, tokenizer, seed: int):
    tiny_causal_lm(tokenizer, seed=seed, weight_std=WEIGHT_STD).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def lm_dirs(tmp_path_factory, lm_tokenizer):
    """Two tiny causal LMs sharing one tokenizer (two 'trained systems')."""
    root = tmp_path_factory.mktemp("lms")
    return _save_lm(root / "a", lm_tokenizer, seed=1), _save_lm(root / "b", lm_tokenizer, seed=2)


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory):
    """A tiny BERT sequence-pair classifier with an 'ENTAILMENT' label at index 2 (also a sentence encoder)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("bert-nli")
    words = sorted(set(metric_words(" ".join(demo_texts()))))[:400]
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    # transformers 5 takes the vocabulary as `vocab` (`vocab_file=` is ignored: every word [UNK]).
    tokenizer = BertTokenizerFast(vocab=str(path / "vocab.txt"), do_lower_case=True)
    assert tokenizer.convert_tokens_to_ids(words[0]) != tokenizer.unk_token_id
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, initializer_range=0.5,
                        label2id=NLI_LABELS, id2label={i: label for label, i in NLI_LABELS.items()})
    torch.manual_seed(0)
    BertForSequenceClassification(config).eval().save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def demo_records():
    """Demo records with two passages each: the facet's own description and another one."""
    data = load_data("demo")
    docs = [{"id": f"p{i}", "text": d["text"], "score": 1.0} for i, d in enumerate(data.documents)]
    return [{**r, "passages": docs[i % 9: i % 9 + 2], "error": None} for i, r in enumerate(data.records)]


@pytest.fixture
def retrieved_dir(tmp_path, demo_records):
    """A retrieval output: 6 good test rows, 2 bad test rows, and T1 rows that must not be evaluated."""
    records = [{**r, "split": "test"} for r in demo_records[:6]]
    records.append({**demo_records[6], "id": "bad-error", "split": "test", "error": "retrieval failed: gone"})
    records.append({**demo_records[7], "id": "bad-passages", "split": "test", "passages": []})
    records += [{**r, "split": "t1"} for r in demo_records[8:11]]
    table = records_to_table(records)
    shards = tmp_path / "retrieve" / "retrieved"
    shards.mkdir(parents=True)
    pq.write_table(table.slice(0, 5), shards / "a.parquet")
    pq.write_table(table.slice(5), shards / "b.parquet")
    return tmp_path / "retrieve"
