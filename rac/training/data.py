"""Training rows as token ids: SFT examples (prompt masked) and preference pairs.

Rows come from the stage outputs (record schema; T2 rows add ``chosen``/``rejected``).
Prompts are built by :mod:`rac.models.prompts`, so training sees exactly what decoding
and serving send.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rac.config import ConfigError
from rac.models.prompts import build_prompt, completion_text, prompt_token_ids

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def read_rows(path: str | Path, columns: list[str], split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a stage's Parquet output that have no error, sorted by id.

    Raises :class:`ConfigError` naming the path and the missing column(s).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"training data {path} does not exist; run the stage that writes it first")
    # A stage's output folder may hold JSON beside its Parquet parts: read only the parts.
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(f"training data {path} holds no Parquet files; run the stage that writes it first")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ConfigError(f"training data {path} lacks column(s) {', '.join(missing)}; "
                          f"it has {', '.join(table.column_names)}")
    if split is not None and "split" in table.column_names:
        table = table.filter(pc.equal(table.column("split"), split))
    if "error" in table.column_names:
        table = table.filter(pc.is_null(table.column("error")))
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    if not rows:
        raise ConfigError(f"training data {path} has no usable rows" + (f" in split '{split}'" if split else ""))
    return rows


def holdout_by_topic(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval) with ``fraction`` of the topics held out (at least one topic if fraction > 0)."""
    if fraction <= 0:
        return rows, []
    topics = sorted({str(r.get("topic_id") or r["id"]) for r in rows})
    random.Random(seed).shuffle(topics)
    n_eval = min(len(topics) - 1, max(1, round(fraction * len(topics))))
    held = set(topics[:n_eval])
    train = [r for r in rows if str(r.get("topic_id") or r["id"]) not in held]
    return train, [r for r in rows if str(r.get("topic_id") or r["id"]) in held]


def _answer_ids(tokenizer: Any, question: str, max_answer_tokens: int) -> list[int]:
    ids = tokenizer(completion_text(question, None), add_special_tokens=False)["input_ids"]
    return ids[: max_answer_tokens - 1] + [tokenizer.eos_token_id]


def _prompt_ids(tokenizer: Any, row: dict[str, Any], grounded: bool, budget: int) -> tuple[list[int], bool]:
    prompt = build_prompt(tokenizer, row["query"], row.get("passages") or [], grounded=grounded, max_tokens=budget)
    return prompt_token_ids(tokenizer, prompt.text), prompt.trimmed


def sft_examples(rows: list[dict[str, Any]], tokenizer: Any, grounded: bool, max_length: int,
                 max_answer_tokens: int) -> list[dict[str, Any]]:
    """``{id, input_ids, labels}`` per row: the loss falls on the question tokens only."""
    out, trimmed = [], 0
    for row in rows:
        answer = _answer_ids(tokenizer, row["question"], max_answer_tokens)
        prompt, was_trimmed = _prompt_ids(tokenizer, row, grounded, max_length - len(answer))
        trimmed += was_trimmed
        out.append({"id": row["id"], "input_ids": prompt + answer,
                    "labels": [IGNORE_INDEX] * len(prompt) + answer})
    if trimmed:
        logger.info("passages trimmed to fit max_length=%d in %d of %d rows", max_length, trimmed, len(rows))
    return out


def preference_examples(rows: list[dict[str, Any]], tokenizer: Any, max_length: int,
                        max_answer_tokens: int) -> list[dict[str, Any]]:
    """``{id, chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels}`` per T2 row.

    Both answers follow the same grounded prompt (U_q, D).
    """
    out, trimmed = [], 0
    for row in rows:
        chosen = _answer_ids(tokenizer, row["chosen"], max_answer_tokens)
        rejected = _answer_ids(tokenizer, row["rejected"], max_answer_tokens)
        prompt, was_trimmed = _prompt_ids(tokenizer, row, True, max_length - max(len(chosen), len(rejected)))
        trimmed += was_trimmed
        mask = [IGNORE_INDEX] * len(prompt)
        out.append({"id": row["id"], "chosen_input_ids": prompt + chosen, "chosen_labels": mask + chosen,
                    "rejected_input_ids": prompt + rejected, "rejected_labels": mask + rejected})
    if trimmed:
        logger.info("passages trimmed to fit max_length=%d in %d of %d rows", max_length, trimmed, len(rows))
    return out


def pad_batch(sequences: list[list[int]], labels: list[list[int]], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    lab = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (s, lbl) in enumerate(zip(sequences, labels, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(lbl)] = torch.tensor(lbl)
        mask[i, : len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": lab}
