"""Prompt ids in, text out: the left-padded batch every model of the method reads, and the
batched greedy generation that evaluation and serving share.

Prompts are token ids from :func:`rac.models.prompts.prompt_token_ids`, the encoding
training used, so every model sees the prompts it was trained on. Left padding puts every
row's last prompt token in the same column, where generation starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rac.config import ConfigError, field_help
from rac.models.prompts import decode_whole

#: Prefix of the error of a row whose generation raised (not bad input); a rerun retries it.
GENERATION_FAILURE = "generation failed: "
#: Fewer prompt tokens leave no room for the instruction and the query.
MIN_PROMPT_TOKENS = 16


def max_new_tokens_field(default: int = 32) -> Any:
    """The config field of the token limit of one generated question (checked by :func:`check_lengths`)."""
    return field_help(default, help="Tokens generated at most per question.")


def max_prompt_tokens_field(default: int = 512) -> Any:
    """The config field of the prompt's token budget (checked by :func:`check_lengths`)."""
    return field_help(default, help="Token budget of each prompt; passages are trimmed to fit "
                                    "(rac.models.build_prompt).")


def check_lengths(max_new_tokens: int | None = None, max_prompt_tokens: int | None = None,
                  section: str = "") -> None:
    """Refuse a token limit below 1 or a prompt budget below :data:`MIN_PROMPT_TOKENS`
    (``section`` prefixes the key in the message, e.g. ``generator.``)."""
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"{section}max_new_tokens must be at least 1, got {max_new_tokens}")
    if max_prompt_tokens is not None and max_prompt_tokens < MIN_PROMPT_TOKENS:
        raise ConfigError(f"{section}max_prompt_tokens must be at least {MIN_PROMPT_TOKENS}, got {max_prompt_tokens}")


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device: Any = "cpu") -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` of the prompts, left-padded to the longest."""
    import torch

    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_token_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return input_ids, attention_mask


def greedy_generate(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]],
                    max_new_tokens: int | Sequence[int]) -> list[str]:
    """Greedy continuations of ``prompts``, from one batched ``generate``.

    Parameters
    ----------
    model, tokenizer
        A causal LM and its tokenizer (with a pad token: :func:`rac.models.load_tokenizer`).
    prompts
        Prompt token ids (:func:`rac.models.prompts.prompt_token_ids`), one list per row.
    max_new_tokens
        Token limit per row (or one for all). The batch runs to the largest; each row is then
        cut to its own limit, which for greedy decoding is the text the row gets alone.

    Returns
    -------
    The decoded continuations (special tokens dropped, no character cut in half at the token
    limit: :func:`rac.models.prompts.decode_whole`), in the order of ``prompts``.
    """
    import torch

    if not prompts:
        return []
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(limits)} max_new_tokens values")
    device = next(model.parameters()).device
    input_ids, attention_mask = left_pad(prompts, tokenizer.pad_token_id, device)
    with torch.inference_mode():
        # temperature/top_p/top_k None: a model's generation_config may set them for sampling.
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max(limits),
                             do_sample=False, num_beams=1, temperature=None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    new_tokens = out[:, input_ids.shape[1]:].tolist()
    return [decode_whole(tokenizer, row[:limit]) for row, limit in zip(new_tokens, limits, strict=True)]
