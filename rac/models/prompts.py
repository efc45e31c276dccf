"""The prompts of the method, defined once and used by training, decoding and serving.

- grounded (p_theta0): instruction, the query U_q, the numbered passages D, then the slot
  of the clarifying question;
- ungrounded (p_uncond): instruction and the query only.

The completion (training target) is ``" " + question`` followed by the end-of-sequence
token. :func:`build_prompt` keeps a prompt within a token budget by trimming passages
first (dropping the last ones, then shortening the last kept one); the instruction, the
query and the question slot are never cut, and the budget leaves room for the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

INSTRUCTION_GROUNDED = (
    "Ask the user one clarifying question about their search query. "
    "Ground the question in the passages.")
INSTRUCTION_UNGROUNDED = "Ask the user one clarifying question about their search query."
QUESTION_SLOT = "\nClarifying question:"
#: A passage shortened below this many tokens is dropped instead.
MIN_PASSAGE_TOKENS = 8


class PromptTooLongError(ValueError):
    """Instruction and query alone do not fit the token budget."""


@dataclass
class Prompt:
    text: str
    num_tokens: int
    passages_used: int
    passages_given: int
    trimmed: bool


def _head(query: str, grounded: bool) -> str:
    instruction = INSTRUCTION_GROUNDED if grounded else INSTRUCTION_UNGROUNDED
    return f"{instruction}\nQuery: {query}" + ("\nPassages:" if grounded else "")


def _passage_line(i: int, text: str) -> str:
    return f"\n[{i}] {text}"


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_prompt(
    tokenizer: Any,
    query: str,
    passages: list[dict[str, Any]] | list[str] | None = None,
    grounded: bool = True,
    max_tokens: int | None = None,
) -> Prompt:
    """The grounded (with ``passages``) or ungrounded prompt for ``query``.

    Parameters
    ----------
    tokenizer
        Any Hugging Face tokenizer; used to count tokens.
    query
        The user query U_q.
    passages
        Retrieved passages D (dicts with ``text``, or strings), best first.
    grounded
        False gives the ungrounded prompt (passages ignored).
    max_tokens
        Budget of the prompt in tokens (None: no limit). Passages are trimmed to fit.
    """
    texts = [p["text"] if isinstance(p, dict) else p for p in (passages or [])] if grounded else []
    head = _head(query, grounded)
    full = head + "".join(_passage_line(i, t) for i, t in enumerate(texts, 1)) + QUESTION_SLOT
    n = _count(tokenizer, full)
    if max_tokens is None or n <= max_tokens:
        return Prompt(full, n, len(texts), len(texts), False)
    fixed = _count(tokenizer, head + QUESTION_SLOT)
    if fixed > max_tokens:
        raise PromptTooLongError(
            f"the instruction and query take {fixed} tokens, more than the prompt budget of {max_tokens}; "
            f"raise max_length (or lower max_new_tokens), or shorten the query")
    kept: list[str] = []
    for text in texts:
        candidate = head + "".join(_passage_line(i, t) for i, t in enumerate([*kept, text], 1)) + QUESTION_SLOT
        if _count(tokenizer, candidate) <= max_tokens:
            kept.append(text)
            continue
        # Shorten this passage to what is left of the budget, then stop.
        base = head + "".join(_passage_line(i, t) for i, t in enumerate(kept, 1))
        room = max_tokens - _count(tokenizer, base + _passage_line(len(kept) + 1, "") + QUESTION_SLOT)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        while room >= MIN_PASSAGE_TOKENS:
            short = decode_whole(tokenizer, ids[:room]).rstrip() + " ..."
            candidate = base + _passage_line(len(kept) + 1, short) + QUESTION_SLOT
            if _count(tokenizer, candidate) <= max_tokens:
                kept.append(short)
                break
            room -= 2  # token boundaries shift when re-tokenised; back off until it fits
        break
    text = head + "".join(_passage_line(i, t) for i, t in enumerate(kept, 1)) + QUESTION_SLOT
    return Prompt(text, _count(tokenizer, text), len(kept), len(texts), True)


def prompt_token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt as training, evaluation and serving feed it: BOS first when the
    tokenizer adds one, no other special token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        ids = [tokenizer.bos_token_id, *ids]
    return ids


#: What a lossy UTF-8 decoder puts for bytes that do not form a character.
REPLACEMENT_CHARACTER = "\ufffd"


def decode_whole(tokenizer: Any, token_ids: Sequence[int]) -> str:
    """``token_ids`` as text (special tokens dropped), without a character broken at the end.

    A byte-level BPE token can hold part of a UTF-8 character (an emoji or a CJK character
    spans several tokens), so ids cut at a token limit can end inside one, which the
    tokenizer's lossy decoder turns into U+FFFD. Those trailing bytes are dropped: the text
    ends with the last whole character.
    """
    return tokenizer.decode(list(token_ids), skip_special_tokens=True).rstrip(REPLACEMENT_CHARACTER)


def question_from_text(text: str) -> str:
    """The clarifying question in generated ``text``: its first line, up to the first '?'.

    A trained model ends the question with EOS; cutting at the first line and question mark
    keeps an untrained or rambling model to one question.
    """
    line = text.strip().split("\n", 1)[0].strip()
    mark = line.find("?")
    return line[: mark + 1] if mark >= 0 else line


def completion_text(question: str, eos_token: str | None) -> str:
    """The training target after the prompt: the question, then end of sequence."""
    return " " + question.strip() + (eos_token or "")
