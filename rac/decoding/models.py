"""The two models of mixture decoding: the shared-tokenizer check and their revisions."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from rac.config import ConfigError
from rac.models import load_tokenizer

logger = logging.getLogger(__name__)

#: Special-token attributes that must agree between the two models' tokenizers.
SPECIAL_TOKEN_ATTRS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class TokenizerMismatchError(ConfigError):
    """The grounded and ungrounded models do not share one tokenizer."""


def _special_tokens(tokenizer: Any) -> dict[str, tuple[str, int] | None]:
    """``{attr: (token, id)}`` of the special tokens the tokenizer defines."""
    out: dict[str, tuple[str, int] | None] = {}
    for attr in SPECIAL_TOKEN_ATTRS:
        token = getattr(tokenizer, attr, None)
        out[attr] = None if token is None else (str(token), tokenizer.convert_tokens_to_ids(str(token)))
    return out


def check_same_tokenizer(grounded_path: str | Path, ungrounded_path: str | Path) -> Any:
    """Load both models' tokenizers and refuse them unless they are the same.

    Mixture decoding feeds one token sequence to both models, so a token id must mean the
    same string to each: the vocabularies (token -> id) and the special tokens must agree.

    Parameters
    ----------
    grounded_path, ungrounded_path
        Model directories of p_theta0 and p_uncond.

    Returns
    -------
    The grounded model's tokenizer (left padding, with a pad token).

    Raises
    ------
    TokenizerMismatchError
        With what differs (vocabulary size, the first differing tokens, special tokens).
    """
    tok_g, tok_u = load_tokenizer(grounded_path), load_tokenizer(ungrounded_path)
    problems = []
    vocab_g, vocab_u = tok_g.get_vocab(), tok_u.get_vocab()
    if vocab_g != vocab_u:
        only_g = sorted(set(vocab_g.items()) - set(vocab_u.items()), key=lambda kv: kv[1])[:3]
        only_u = sorted(set(vocab_u.items()) - set(vocab_g.items()), key=lambda kv: kv[1])[:3]
        examples = [f"{side}-only (token, id) e.g. {items}" for side, items in (("grounded", only_g),
                                                                               ("ungrounded", only_u)) if items]
        problems.append(f"vocabularies differ ({len(vocab_g)} vs {len(vocab_u)} tokens; {'; '.join(examples)})")
    special_g, special_u = _special_tokens(tok_g), _special_tokens(tok_u)
    diff = {k: (special_g[k], special_u[k]) for k in SPECIAL_TOKEN_ATTRS if special_g[k] != special_u[k]}
    if diff:
        problems.append(f"special tokens differ, (token, id) grounded vs ungrounded: {diff}")
    if tok_g.rac_prompt_format != tok_u.rac_prompt_format:
        problems.append(f"prompt formats differ ({tok_g.rac_prompt_format} vs {tok_u.rac_prompt_format}; "
                        f"rac_prompt.json)")
    if problems:
        raise TokenizerMismatchError(
            f"grounded_model {grounded_path} and ungrounded_model {ungrounded_path} do not share a tokenizer: "
            + "; ".join(problems) + ". Mixture decoding feeds the same tokens to both; fine-tune both from the "
            "same base model, or point both at models saved with the same tokenizer")
    return tok_g


def model_revision(path: str | Path, hash_weights: bool = True) -> str:
    """``<path>@<12 hex digits>``: a fingerprint of the model's config and weights.

    The digest covers ``config.json`` and, for each weights file, its name and either its
    full SHA-256 (``hash_weights``) or its size when hashing is turned off (very large
    models on slow disks).
    """
    path = Path(path)
    h = hashlib.sha256()
    h.update(json.dumps(json.loads((path / "config.json").read_text()), sort_keys=True).encode())
    weights = sorted(p for pattern in ("*.safetensors", "*.bin") for p in path.glob(pattern))
    for file in weights:
        h.update(file.name.encode())
        if hash_weights:
            with file.open("rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 22), b""):
                    h.update(chunk)
        else:
            h.update(str(file.stat().st_size).encode())
    return f"{path}@{h.hexdigest()[:12]}"

