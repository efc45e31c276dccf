"""The negatives stage on Ray Data: T2 rows in, (chosen, rejected) pairs out.

Each actor of the pool loads the grounded and the ungrounded model once and decodes
``pool.batch_size`` rows at a time with :class:`~rac.decoding.mixture.MixtureDecoder`.
The driver writes every output block as its own Parquet part (:mod:`rac.parts`: atomic
parts, so a run that is killed and started again decodes only the ids not yet written:
nothing is lost, nothing is written twice). Every input row of the selected splits comes
out exactly once, with its negative or with an ``error``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rac.config import write_run_info
from rac.data.loaders import DataFormatError
from rac.data.schema import PASSAGE_TYPE
from rac.decoding.config import NegativesConfig
from rac.decoding.memory import check_memory
from rac.decoding.mixture import MixtureDecoder, MixtureSample, row_seed
from rac.decoding.models import check_same_tokenizer, model_revision
from rac.failures import StageResult
from rac.models import PromptTooLongError, build_prompt, load_tokenizer
from rac.models.factory import check_model_dir, load_causal_lm, resolve_device
from rac.models.generation import GENERATION_FAILURE
from rac.parts import (
    PartWriter,
    check_params,
    clear_parts,
    drop_error_rows,
    read_parts,
    read_stage_output,
    table_digest,
    written_ids,
)
from rac.placement import record_placement
from rac.retrieval.stage import read_retrieved
from rac.rows import batch_then_rows, row_error

logger = logging.getLogger(__name__)

#: Folder of ``output_dir`` holding the Parquet parts.
NEGATIVES_DIR = "negatives"

NEGATIVES_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("query", pa.string()),
    ("passages", pa.list_(PASSAGE_TYPE)),
    ("passages_used", pa.int32()),
    ("chosen", pa.string()),
    ("rejected", pa.string()),
    ("rejected_token_ids", pa.list_(pa.int32())),
    ("provenance", pa.list_(pa.int8())),
    ("mixing_rate", pa.float64()),
    ("finish_reason", pa.string()),
    ("alpha", pa.float64()),
    ("seed", pa.int64()),
    ("grounded_model", pa.string()),
    ("ungrounded_model", pa.string()),
    ("topic_id", pa.string()),
    ("facet_id", pa.string()),
    ("split", pa.string()),
    ("error", pa.string()),
])
NEGATIVES_SCHEMA = NEGATIVES_SCHEMA.with_metadata({
    "provenance": "per generated token: 1 = from ungrounded_model (p_uncond, a_t = 1), "
                  "0 = from grounded_model (p_theta0)",
    "mixing_rate": "realised share of ungrounded tokens, mean(provenance)",
})


def input_error(row: dict[str, Any]) -> str | None:
    """Why a retrieved row cannot get a negative, or None."""
    if row.get("error"):
        return f"input row has an error: {row['error']}"
    if not row.get("passages"):
        return "no passages retrieved; the grounded prompt needs at least one"
    if not (row.get("question") or "").strip():
        return "no gold question (chosen) for this row"
    if not (row.get("query") or "").strip():
        return "empty query"
    return None


class NegativesBatch:
    """Ray Data stage: one mixture-decoded negative (or an error) per row.

    Parameters
    ----------
    cfg
        The stage config (models, sampling, device).
    revisions
        ``{"grounded_model": ..., "ungrounded_model": ...}`` fingerprints computed once by
        the driver, written on every row.
    """

    def __init__(self, cfg: NegativesConfig, revisions: dict[str, str]):
        self.cfg, self.revisions = cfg, revisions
        device = resolve_device(cfg.device, cfg.pool.num_gpus)
        self.tokenizer = load_tokenizer(cfg.grounded_model)
        self.decoder = MixtureDecoder(load_causal_lm(cfg.grounded_model, cfg.dtype, device, cfg.attn_implementation),
                                      load_causal_lm(cfg.ungrounded_model, cfg.dtype, device,
                                                     cfg.attn_implementation),
                                      self.tokenizer, cfg.sampling)
        record_placement(cfg.output_dir, "negatives_actor")
        logger.info("negatives actor ready on %s", device)

    def _prompts(self, row: dict[str, Any]) -> tuple[str, str, int] | str:
        try:
            grounded = build_prompt(self.tokenizer, row["query"], row["passages"], grounded=True,
                                    max_tokens=self.cfg.max_prompt_tokens)
            ungrounded = build_prompt(self.tokenizer, row["query"], grounded=False,
                                      max_tokens=self.cfg.max_prompt_tokens)
        except PromptTooLongError as e:
            return f"prompt too long: {e}"
        if grounded.passages_used == 0:
            return f"no passage fits the prompt budget of max_prompt_tokens={self.cfg.max_prompt_tokens}"
        return grounded.text, ungrounded.text, grounded.passages_used

    def _decode(self, rows: list[tuple[str, str, int]]) -> list[MixtureSample]:
        """Mixture samples of ``(grounded prompt, ungrounded prompt, seed)`` rows, decoded together."""
        return self.decoder.generate([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out = []
        todo: list[tuple[int, str, str, int]] = []
        for i, row in enumerate(rows):
            seed = row_seed(self.cfg.seed, row["id"])
            out.append({"id": row["id"], "query": row.get("query"), "passages": row.get("passages"),
                        "passages_used": None, "chosen": row.get("question"), "rejected": None,
                        "rejected_token_ids": None, "provenance": None, "mixing_rate": None, "finish_reason": None,
                        "alpha": self.cfg.sampling.alpha, "seed": seed, **self.revisions,
                        "topic_id": row.get("topic_id"), "facet_id": row.get("facet_id"), "split": row.get("split"),
                        "error": input_error(row)})
            if out[-1]["error"] is None:
                prompts = self._prompts(row)
                if isinstance(prompts, str):
                    out[-1]["error"] = prompts
                else:
                    out[-1]["passages_used"] = prompts[2]
                    todo.append((i, prompts[0], prompts[1], seed))
        samples = batch_then_rows(self._decode, [t[1:] for t in todo]) if todo else []
        for (i, *_), sample in zip(todo, samples, strict=True):
            if isinstance(sample, Exception):
                out[i]["error"] = row_error(GENERATION_FAILURE, sample)
            else:
                out[i].update(rejected=sample.text, rejected_token_ids=sample.token_ids,
                              provenance=sample.provenance, mixing_rate=sample.mixing_rate,
                              finish_reason=sample.finish_reason)
        return pa.Table.from_pylist(out, schema=NEGATIVES_SCHEMA)


# ----------------------------------------------------------------------------- input and output


def read_negatives(output_dir: str | Path, columns: Sequence[str] = tuple(NEGATIVES_SCHEMA.names)) -> pa.Table:
    """The pairs a negatives run wrote (:data:`NEGATIVES_SCHEMA`), sorted by id.

    ``output_dir`` is the run's output directory or its ``negatives/`` folder of parts. Raises
    ``FileNotFoundError`` when there are none, and :class:`~rac.data.loaders.DataFormatError`
    when ``columns`` are missing (:func:`rac.parts.read_stage_output`).
    """
    table, _ = read_stage_output(
        output_dir, NEGATIVES_DIR, columns, absent=f"run `python -m jobs.generate_negatives --output_dir "
                                                   f"{output_dir}` first or point at its output_dir",
        expected="the negatives stage's rows (rac.decoding.stage.NEGATIVES_SCHEMA)")
    return table.sort_by("id")


def _run_params(cfg: NegativesConfig, revisions: dict[str, str], table: pa.Table) -> dict[str, Any]:
    """What makes a negative what it is; parts from different params must not be mixed."""
    params: dict[str, Any] = {**dataclasses.asdict(cfg.sampling), "max_prompt_tokens": cfg.max_prompt_tokens,
                              "seed": cfg.seed}
    # The weights digest, not the path: moving a model does not change its negatives.
    params.update({f"{k}_digest": v.rsplit("@", 1)[-1] for k, v in revisions.items()})
    params["input_digest"] = table_digest(table, ["id", "query", "question", "passages"])
    return params


def negatives_dataset(ds: Any, cfg: NegativesConfig, revisions: dict[str, str]) -> Any:
    """The lazy negatives stage: record-schema rows in, :data:`NEGATIVES_SCHEMA` rows out."""
    return ds.map_batches(NegativesBatch, fn_constructor_args=(cfg, revisions), batch_format="pyarrow",
                          **cfg.pool.map_batches_kwargs())


def _prompt_size(row: dict[str, Any]) -> int:
    return len(row.get("query") or "") + sum(len(p["text"]) for p in row.get("passages") or [])


def run_generate_negatives(cfg: NegativesConfig) -> StageResult:
    """Decode an unfaithful negative for every row of ``cfg.splits`` and write the T2 pairs.

    Output in ``cfg.output_dir``: ``negatives/part-*.parquet`` (:data:`NEGATIVES_SCHEMA`,
    every input row of the selected splits exactly once, by id; read them with
    :func:`read_negatives`), ``negatives/_params.json`` (sampling settings and model
    digests of the parts), ``errors.jsonl`` (rows with an error) and the run info.
    Ids already written by an earlier run into the same directory are skipped, except rows
    whose decoding raised there (``cfg.retry_failed``).

    Returns
    -------
    StageResult
        ``rows_in`` (rows of the selected splits), ``rows_out`` (rows with a negative), the
        rows whose decoding raised as failed rows, and in ``details``: ``skipped`` (already
        written), ``generated`` (decoded by this run), ``retried`` (rows whose decoding had
        raised in an earlier run, decoded again), ``error_rows`` and ``mean_mixing_rate``
        over all written rows.
    """
    import ray

    for key in ("grounded_model", "ungrounded_model"):
        check_model_dir(getattr(cfg, key), key, f"train it first (jobs.train_sft exports <output_dir>/model) or "
                                                f"point {key} at a saved model")
    check_same_tokenizer(cfg.grounded_model, cfg.ungrounded_model)
    check_memory(cfg)
    revisions = {"grounded_model": model_revision(cfg.grounded_model, cfg.hash_weights),
                 "ungrounded_model": model_revision(cfg.ungrounded_model, cfg.hash_weights)}
    table = read_retrieved(cfg.input_dir, cfg.splits)

    out = Path(cfg.output_dir)
    parts_dir = out / NEGATIVES_DIR
    writer = PartWriter(parts_dir)
    if not cfg.resume:
        clear_parts(parts_dir)
    check_params(parts_dir, _run_params(cfg, revisions, table), restart_hint="pass --resume false to start over")
    retried = drop_error_rows(parts_dir, GENERATION_FAILURE, NEGATIVES_SCHEMA) if cfg.retry_failed else 0
    done = written_ids(parts_dir)
    ids = table.column("id").to_pylist()
    todo_rows = [r for r in table.to_pylist() if r["id"] not in done]
    logger.info("negatives: %d rows in %s, %d already written, %d to decode", len(ids), cfg.splits,
                len(ids) - len(todo_rows), len(todo_rows))

    if todo_rows:
        # Rows of similar prompt length decode together (less padding); one block per
        # batch, so each batch becomes one part as soon as it is decoded.
        todo_rows.sort(key=_prompt_size)
        bs = cfg.pool.batch_size
        todo = pa.Table.from_pylist(todo_rows, schema=table.schema)
        blocks = [todo.slice(i, bs) for i in range(0, todo.num_rows, bs)]
        results = negatives_dataset(ray.data.from_arrow(blocks), cfg, revisions)
        for part in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.write(part)
            logger.info("negatives: %d/%d rows written", writer.rows, len(todo_rows))

    written = read_parts(parts_dir, schema=NEGATIVES_SCHEMA)
    written = NEGATIVES_SCHEMA.empty_table() if written is None else written.sort_by("id")
    written = written.filter(pc.is_in(written.column("id"), value_set=pa.array(ids, type=pa.string())))
    written_list = written.column("id").to_pylist()
    if len(written_list) != len(set(written_list)) or set(written_list) != set(ids):
        raise DataFormatError(parts_dir, "", f"the parts hold {len(written_list)} rows ({len(set(written_list))} "
                                             f"distinct ids) for {len(ids)} input rows; delete the folder and run "
                                             f"again")
    errors = written.filter(pc.is_valid(written.column("error"))).select(["id", "error"]).to_pylist()
    with (out / "errors.jsonl").open("w") as f:
        for row in errors:
            f.write(json.dumps(row) + "\n")
    failed = [e for e in errors if e["error"].startswith(GENERATION_FAILURE)]
    rates = written.column("mixing_rate").drop_null()
    result = StageResult.with_failures(
        "negatives", failed, out / "errors.jsonl", rows_in=len(ids), rows_out=len(ids) - len(errors),
        details={"skipped": len(ids) - len(todo_rows), "generated": len(todo_rows), "retried": retried,
                 "error_rows": len(errors), "alpha": cfg.sampling.alpha,
                 "mean_mixing_rate": pc.mean(rates).as_py() if len(rates) else None, **revisions})
    write_run_info(out, "generate_negatives", cfg, result=result.to_dict())
    logger.info("negatives: %s", result)
    return result
