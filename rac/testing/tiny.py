"""Tiny models built from a config, for tests and benchmarks: a byte-level BPE tokenizer
trained on the data at hand and a 2-layer causal LM. Nothing is downloaded."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rac.data import load_data
from rac.detector.train import TOKEN_CLASSES, export_detector

EOS = "<|endoftext|>"


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained on ``texts`` (EOS doubles as BOS and PAD)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   padding_side="left")


def tiny_causal_lm(tokenizer: Any, arch: str = "llama", layers: int = 2, hidden: int = 64, heads: int = 4,
                   seed: int = 0, weight_std: float | None = None) -> Any:
    """A randomly initialised causal LM of ``layers`` layers for ``tokenizer``.

    ``weight_std`` redraws every weight matrix from N(0, weight_std^2). At the default
    init (std 0.02) a tiny random LM is nearly uniform and its greedy output repeats one
    token whatever the context; at 0.2 its next token depends on the context, so tests can
    tell two models, positions and padding mistakes apart.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(seed)
    common = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
              "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if arch == "llama":
        config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
                             tie_word_embeddings=True, **common)
    elif arch == "gpt2":
        config = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=1024, **common)
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}")
    model = AutoModelForCausalLM.from_config(config)
    if weight_std is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() == 2:
                    param.copy_(torch.randn(param.shape, generator=gen) * weight_std)
    return model.eval()


def demo_texts() -> list[str]:
    """Texts of the built-in demo set (queries, passages, questions) for tokenizer training."""
    data = load_data("demo")
    return [d["text"] for d in data.documents] + [r["query"] for r in data.records] + \
        [r["question"] for r in data.records]


def save_tiny_model(path: str | Path, arch: str = "llama", seed: int = 0, tokenizer: Any = None,
                    **kwargs: Any) -> Path:
    """Write a tiny model and its tokenizer to ``path`` (loadable by ``from_pretrained``)."""
    path = Path(path)
    tokenizer = tokenizer or train_tiny_tokenizer(demo_texts())
    model = tiny_causal_lm(tokenizer, arch=arch, seed=seed, **kwargs)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def save_tiny_encoder(path: str | Path, words: Iterable[str], hidden: int = 64, layers: int = 2, seed: int = 0,
                      num_labels: int | None = None, info: dict[str, Any] | None = None) -> Path:
    """A tiny BERT with a word-level WordPiece vocabulary of ``words`` at ``path``.

    ``num_labels`` given: a token classifier with a random head (``info`` given too: saved as
    an exported unsupported-span detector, :func:`rac.detector.train.export_detector`).
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 takes the vocabulary as `vocab` (a `vocab_file=` keyword is ignored: every word [UNK]).
    tokenizer = BertTokenizerFast(vocab=str(path / "vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=512)
    torch.manual_seed(seed)
    if num_labels is None:
        BertModel(config).eval().save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
        return path
    from transformers import BertForTokenClassification

    config.num_labels, config.id2label, config.label2id = 2, TOKEN_CLASSES, {v: k for k, v in TOKEN_CLASSES.items()}
    return export_detector(BertForTokenClassification(config).eval(), tokenizer, path,
                           info or {"max_length": 128, "threshold": 0.5})
