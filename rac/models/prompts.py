"""The prompts of the method, defined once and used by training, decoding and serving.

- grounded (p_theta0): instruction, the query U_q, the numbered passages D, then the slot
  of the clarifying question;
- ungrounded (p_uncond): instruction and the query only.

The completion (training target) is ``" " + question`` followed by the end-of-sequence
token. How a prompt's text becomes token ids is the model's **prompt format**
(:func:`prompt_token_ids`): ``plain`` (the text, after BOS where the tokenizer puts one) or
``chat`` (the text as a user turn of the tokenizer's chat template, the assistant's turn
opened). A trained model records its format in its directory (:data:`PROMPT_FORMAT_FILE`);
:func:`rac.models.factory.load_tokenizer` reads it, so training, decoding, evaluation and
serving encode a prompt alike. :func:`build_prompt` keeps a prompt within a token budget by trimming passages
first (dropping the last ones, then shortening the last kept one); the instruction, the
query and the question slot are never cut, and the budget leaves room for the answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rac.config import ConfigError

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
    return len(prompt_token_ids(tokenizer, text))


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


#: How a prompt's text becomes the model's input (``prompt.format``).
PromptFormat = Literal["plain", "chat"]
#: The file of a model directory that records the prompt format its model was trained with.
PROMPT_FORMAT_FILE = "rac_prompt.json"


def read_prompt_format(model_dir: str | Path) -> str:
    """The prompt format recorded in ``model_dir`` (``plain`` where none is: a base model)."""
    path = Path(model_dir) / PROMPT_FORMAT_FILE
    return json.loads(path.read_text())["format"] if path.is_file() else "plain"


def write_prompt_format(model_dir: str | Path, prompt_format: str) -> None:
    """Record ``prompt_format`` in ``model_dir`` beside the model it was trained with."""
    (Path(model_dir) / PROMPT_FORMAT_FILE).write_text(json.dumps({"format": prompt_format}) + "\n")


def set_prompt_format(tokenizer: Any, prompt_format: str, key: str = "prompt.format") -> Any:
    """``tokenizer``, set to encode prompts in ``prompt_format`` (:func:`prompt_token_ids`).

    Raises :class:`ConfigError` naming ``key`` when the format is ``chat`` and the tokenizer
    has no chat template.
    """
    if prompt_format not in ("plain", "chat"):
        raise ConfigError(f"{key} must be plain or chat, got {prompt_format!r}")
    if prompt_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{key} is chat but the tokenizer of {tokenizer.name_or_path} has no chat template; "
                          f"use an instruct model's tokenizer, or {key}: plain")
    tokenizer.rac_prompt_format = prompt_format
    tokenizer.rac_bos_prefix = bos_prefix(tokenizer)  # asked once, not for every prompt counted
    return tokenizer


def bos_prefix(tokenizer: Any) -> list[int]:
    """``[BOS]`` when the tokenizer itself puts BOS before a text (its post-processor, as Llama's
    do, or ``add_bos_token``), else ``[]``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    return [bos] if tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos] else []


def prompt_token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a prompt as training, decoding, evaluation and serving feed it: the one
    encoding of a prompt, in the tokenizer's prompt format (:func:`set_prompt_format`):

    - ``plain``: BOS where the tokenizer puts one (:func:`bos_prefix`), then the text; no other
      special token;
    - ``chat``: the text as a user turn of the tokenizer's chat template, the assistant's turn
      opened; the template's own BOS is the only one.
    """
    if getattr(tokenizer, "rac_prompt_format", "plain") == "chat":
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=False)
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    prefix = getattr(tokenizer, "rac_bos_prefix", None)
    if prefix is None:  # a tokenizer not loaded by rac.models.load_tokenizer
        prefix = bos_prefix(tokenizer)
    return prefix + tokenizer(text, add_special_tokens=False)["input_ids"]


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
