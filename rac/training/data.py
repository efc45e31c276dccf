"""Training rows as the token ids TRL's trainers take, built once by the driver.

Rows come from the stage outputs (record schema; T2 rows add ``chosen``/``rejected``).
Prompts are built by :mod:`rac.models.prompts` (passages trimmed to fit ``max_length``),
so training sees exactly the ids decoding, evaluation and serving send. The examples are
written once as Hugging Face datasets on the run's storage (``<output_dir>/data``); every
Ray Train worker memory-maps them and TRL's sampler gives each rank its share:

- SFT: ``input_ids`` and ``labels`` (-100 on the prompt: the loss falls on the question
  only). TRL takes a ``labels`` column as is, so its trainer maps nothing over the data
  (a map would hash TRL's label function with dill, which prints its bytecode under Ray);
- preference pairs: ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (the columns TRL's
  ``DPOTrainer`` tokenizes text into).

Each example also carries its ``id`` and its ``length`` in tokens (for length-grouped batches).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from rac.data.splits import topic_of
from rac.models.prompts import build_prompt, completion_text, prompt_token_ids

logger = logging.getLogger(__name__)

#: The label PyTorch's cross-entropy and TRL skip: the prompt's tokens carry it.
IGNORE_INDEX = -100


def holdout_by_topic(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval) with ``fraction`` of the topics held out (at least one topic if fraction > 0)."""
    if fraction <= 0:
        return rows, []
    topics = sorted({topic_of(r) for r in rows})
    random.Random(seed).shuffle(topics)
    n_eval = min(len(topics) - 1, max(1, round(fraction * len(topics))))
    held = set(topics[:n_eval])
    train = [r for r in rows if topic_of(r) not in held]
    return train, [r for r in rows if topic_of(r) in held]


def _answer_ids(tokenizer: Any, question: str, max_answer_tokens: int) -> list[int]:
    ids = tokenizer(completion_text(question, None), add_special_tokens=False)["input_ids"]
    return ids[: max_answer_tokens - 1] + [tokenizer.eos_token_id]


def _prompt_ids(tokenizer: Any, row: dict[str, Any], grounded: bool, budget: int) -> tuple[list[int], bool]:
    prompt = build_prompt(tokenizer, row["query"], row.get("passages") or [], grounded=grounded, max_tokens=budget)
    return prompt_token_ids(tokenizer, prompt.text), prompt.trimmed


def sft_examples(rows: list[dict[str, Any]], tokenizer: Any, grounded: bool, max_length: int,
                 max_answer_tokens: int) -> list[dict[str, Any]]:
    """``{id, input_ids, labels, length}`` per row: the loss falls on the question only (labels -100 on the
    prompt)."""
    out, trimmed = [], 0
    for row in rows:
        answer = _answer_ids(tokenizer, row["question"], max_answer_tokens)
        prompt, was_trimmed = _prompt_ids(tokenizer, row, grounded, max_length - len(answer))
        trimmed += was_trimmed
        out.append({"id": row["id"], "input_ids": prompt + answer,
                    "labels": [IGNORE_INDEX] * len(prompt) + answer, "length": len(prompt) + len(answer)})
    if trimmed:
        logger.info("passages trimmed to fit max_length=%d in %d of %d rows", max_length, trimmed, len(rows))
    return out


def preference_examples(rows: list[dict[str, Any]], tokenizer: Any, max_length: int,
                        max_answer_tokens: int) -> list[dict[str, Any]]:
    """``{id, prompt_ids, chosen_ids, rejected_ids, length}`` per T2 row.

    Both answers follow the same grounded prompt (U_q, D).
    """
    out, trimmed = [], 0
    for row in rows:
        chosen = _answer_ids(tokenizer, row["chosen"], max_answer_tokens)
        rejected = _answer_ids(tokenizer, row["rejected"], max_answer_tokens)
        prompt, was_trimmed = _prompt_ids(tokenizer, row, True, max_length - max(len(chosen), len(rejected)))
        trimmed += was_trimmed
        out.append({"id": row["id"], "prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
                    "length": len(prompt) + max(len(chosen), len(rejected))})
    if trimmed:
        logger.info("passages trimmed to fit max_length=%d in %d of %d rows", max_length, trimmed, len(rows))
    return out


def example_tokens(example: dict[str, Any], share_prompt: bool = True) -> tuple[int, int]:
    """``(tokens, labelled)`` of one example (:func:`sft_examples` or :func:`preference_examples`)
    in a training step: the tokens run through the policy, a pair's prompt once when
    ``share_prompt``, else twice; and those with a label (the questions)."""
    if "input_ids" in example:
        return len(example["input_ids"]), sum(label != IGNORE_INDEX for label in example["labels"])
    answers = len(example["chosen_ids"]) + len(example["rejected_ids"])
    return len(example["prompt_ids"]) * (1 if share_prompt else 2) + answers, answers


def write_dataset(examples: list[dict[str, Any]], path: Path) -> Path:
    """Save ``examples`` as a Hugging Face dataset at ``path``.

    A dataset of the very same examples is kept as it is, with the caches TRL wrote beside
    it (the precomputed reference log-probs): a resumed run does not recompute them.
    """
    import hashlib
    import json
    import shutil

    from datasets import Dataset

    digest = hashlib.sha256(json.dumps(examples, sort_keys=True).encode()).hexdigest()
    stamp = path / "examples.sha256"
    if stamp.is_file() and stamp.read_text() == digest and (path / "dataset_info.json").is_file():
        return path
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    Dataset.from_list(examples).save_to_disk(str(tmp))
    (tmp / "examples.sha256").write_text(digest)
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def load_dataset_dir(path: str | Path) -> Any:
    """A dataset :func:`write_dataset` saved, memory-mapped (None where there is none)."""
    from datasets import load_from_disk

    path = Path(path)
    return load_from_disk(str(path)) if (path / "dataset_info.json").is_file() else None
