"""The shared-tokenizer check and model revisions."""

from __future__ import annotations

import copy

import pytest

from rac.config import ConfigError
from rac.decoding import TokenizerMismatchError, check_same_tokenizer, model_revision


def _save_tokenizer(tokenizer, path):
    tokenizer.save_pretrained(str(path))
    return path


def test_same_tokenizer_is_accepted(model_dirs):
    tok = check_same_tokenizer(*model_dirs)
    assert tok.padding_side == "left" and tok.pad_token_id is not None


def test_different_vocabularies_are_refused(tmp_path, tokenizer):
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<only-here>"])
    a, b = _save_tokenizer(tokenizer, tmp_path / "a"), _save_tokenizer(other, tmp_path / "b")
    with pytest.raises(TokenizerMismatchError, match=r"vocabularies differ \(512 vs 513 tokens.*<only-here>"):
        check_same_tokenizer(a, b)


def test_different_special_tokens_are_refused(tmp_path, tokenizer):
    other = copy.deepcopy(tokenizer)
    other.eos_token = tokenizer.convert_ids_to_tokens(100)  # same vocabulary, another end-of-sequence token
    a, b = _save_tokenizer(tokenizer, tmp_path / "a"), _save_tokenizer(other, tmp_path / "b")
    with pytest.raises(TokenizerMismatchError, match="special tokens differ.*eos_token") as info:
        check_same_tokenizer(a, b)
    assert "vocabularies differ" not in str(info.value)
    assert isinstance(info.value, ConfigError)  # a job reports it as the user's to fix, no traceback


def test_revision_fingerprints_weights(tmp_path, model_dirs, tokenizer, grounded_model):
    grounded_dir, ungrounded_dir = model_dirs
    rev_g, rev_u = model_revision(grounded_dir), model_revision(ungrounded_dir)
    assert rev_g.startswith(f"{grounded_dir}@") and len(rev_g.rsplit("@", 1)[1]) == 12
    assert rev_g.rsplit("@", 1)[1] != rev_u.rsplit("@", 1)[1]  # same config, other weights
    grounded_model.save_pretrained(str(tmp_path / "copy"))
    assert model_revision(tmp_path / "copy").rsplit("@", 1)[1] == rev_g.rsplit("@", 1)[1]  # moved, same model
    assert model_revision(grounded_dir, hash_weights=False) != rev_g
