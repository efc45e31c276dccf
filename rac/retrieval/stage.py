"""The indexing and retrieval stages on Ray Data.

Both are callable classes applied with ``map_batches`` on an actor pool: each actor builds
its own client (or loads the embedded index) once in ``__init__``; nothing with a socket
is pickled from the driver. Every row comes out: with its passages, or with an ``error``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rac.config import ActorPoolConfig, write_run_info
from rac.data.config import DataConfig
from rac.data.loaders import DataFormatError
from rac.data.prepare import prepare_data
from rac.data.schema import PASSAGE_TYPE, records_to_table
from rac.failures import StageResult
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
from rac.retrieval.base import IndexMissingError, RetrievalError, Retriever, bm25_terms, query_error
from rac.retrieval.config import IndexConfig, RetrieveConfig, RetrieverConfig
from rac.retrieval.elasticsearch import ElasticsearchRetriever
from rac.retrieval.embedded import PARAMS_FILE, EmbeddedBM25Retriever

logger = logging.getLogger(__name__)

RETRIEVED_DIR = "retrieved"
#: Prefix of the error of a row whose search the server could not answer (not bad input).
SERVER_FAILURE = "retrieval failed: "


def make_retriever(cfg: RetrieverConfig) -> Retriever:
    """The configured backend: Elasticsearch when a URL is set, else embedded BM25."""
    if cfg.backend == "elasticsearch":
        return ElasticsearchRetriever(cfg.elasticsearch, k1=cfg.k1, b=cfg.b)
    return EmbeddedBM25Retriever(cfg.index_dir)


def check_retriever(cfg: RetrieverConfig) -> None:
    """Fail fast in the driver, before any actor starts: server up, index present."""
    if cfg.backend == "elasticsearch":
        es = ElasticsearchRetriever(cfg.elasticsearch, k1=cfg.k1, b=cfg.b)
        try:
            es.check_ready(need_index=True)
        finally:
            es.close()
    elif not (Path(cfg.index_dir) / PARAMS_FILE).is_file():
        raise IndexMissingError(f"no embedded BM25 index in {cfg.index_dir}; run `python -m jobs.index` first "
                                f"or set retriever.index_dir to the directory it wrote")


class RetrieveBatch:
    """Ray Data stage: adds ``passages`` (top-k, best first) or ``error`` to each row."""

    def __init__(self, cfg: RetrieverConfig):
        self.cfg = cfg
        self.retriever = make_retriever(cfg)

    def __call__(self, batch: pa.Table) -> pa.Table:
        queries = batch.column("query").to_pylist()
        errors = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * len(queries)
        passages: list[list[dict[str, Any]] | None] = [None] * len(queries)
        todo = []
        for i, q in enumerate(queries):
            if errors[i] is None:
                errors[i] = query_error(q, self.cfg.max_query_chars)
            if errors[i] is None:
                todo.append(i)
        if todo:
            try:
                found = self.retriever.search([queries[i] for i in todo], self.cfg.top_k)
            except RetrievalError as e:
                # The server is gone for the whole batch: record it on every row and go on,
                # so the run ends with all rows accounted for and the reason on each.
                found = [f"{SERVER_FAILURE}{e}"] * len(todo)
            for i, result in zip(todo, found, strict=True):
                if isinstance(result, str):
                    errors[i] = result
                else:
                    passages[i] = result
        batch = _set_column(batch, "passages", pa.array(passages, type=pa.list_(PASSAGE_TYPE)))
        return _set_column(batch, "error", pa.array(errors, type=pa.string()))


class IndexBatch:
    """Ray Data stage: bulk-indexes a shard of the corpus; one ``{id, error}`` row per passage."""

    def __init__(self, cfg: RetrieverConfig):
        self.es = ElasticsearchRetriever(cfg.elasticsearch, k1=cfg.k1, b=cfg.b)

    def __call__(self, batch: pa.Table) -> pa.Table:
        passages = batch.select(["id", "text", "source"]).to_pylist()
        failed = {f["id"]: f["error"] for f in self.es.index_passages(passages)}
        ids = [p["id"] for p in passages]
        return pa.table({"id": ids, "error": pa.array([failed.get(i) for i in ids], type=pa.string())})


def _set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)


# ----------------------------------------------------------------------------- stages


def check_corpus(corpus: list[dict[str, Any]], data: DataConfig) -> None:
    """Refuse a corpus that no query could ever match: no passage, or none with a searchable word."""
    if not any(bm25_terms(p["text"]) for p in corpus):
        source = data.corpus_path or data.path or "the demo set"
        raise DataFormatError(source, "", f"no passage of the corpus ({len(corpus)} passages) has a searchable word "
                                          f"(letters or digits); check the file, or set data.corpus_path to "
                                          f"another corpus")


def run_index(cfg: IndexConfig) -> StageResult:
    """Build the passage corpus from ``cfg.data`` and index it into the configured backend.

    Writes ``corpus.parquet``, ``index_errors.jsonl`` (one line per passage not indexed,
    with the reason) and the run info to ``cfg.output_dir``. Returns a summary with
    ``passages``, ``indexed`` and ``failed`` counts (``passages == indexed + failed``).
    """
    import ray

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _, corpus = prepare_data(cfg.data)
    check_corpus(corpus, cfg.data)
    pq.write_table(pa.Table.from_pylist(corpus), out / "corpus.parquet")
    rcfg = cfg.retriever
    failures: list[dict[str, str]] = []
    if rcfg.backend == "embedded":
        EmbeddedBM25Retriever.build(corpus, rcfg.index_dir, k1=rcfg.k1, b=rcfg.b)
        indexed = len(corpus)
    else:
        es = ElasticsearchRetriever(rcfg.elasticsearch, k1=rcfg.k1, b=rcfg.b)
        try:
            es.check_ready(need_index=False)
            es.create_index(recreate=cfg.recreate)
            shards = max(1, min(len(corpus) // cfg.pool.batch_size + 1, 4 * cfg.pool.max_size))
            ds = ray.data.from_items(corpus, override_num_blocks=shards)
            results = ds.map_batches(IndexBatch, fn_constructor_args=(rcfg,), batch_format="pyarrow",
                                     **cfg.pool.map_batches_kwargs())
            table = pa.concat_tables(ray.get(results.to_arrow_refs()))
            if table.num_rows != len(corpus):  # the stage maps row for row; anything else is a bug
                raise RuntimeError(f"indexing returned {table.num_rows} rows for {len(corpus)} passages")
            failures = table.filter(pc.is_valid(table.column("error"))).to_pylist()
            es.refresh()
            indexed = es.count()
        finally:
            es.close()
    with (out / "index_errors.jsonl").open("w") as f:
        for row in failures:
            f.write(json.dumps(row) + "\n")
    result = StageResult.with_failures("index", failures, out / "index_errors.jsonl", rows_in=len(corpus),
                                       rows_out=indexed, details={"backend": rcfg.backend})
    write_run_info(out, "index", cfg, result=result.to_dict())
    logger.info("index: %s", result)
    return result


def retrieve_dataset(ds: Any, retriever: RetrieverConfig, pool: ActorPoolConfig) -> Any:
    """The lazy retrieval stage: ``ds`` rows (with ``query``) gain ``passages`` and ``error``."""
    return ds.map_batches(RetrieveBatch, fn_constructor_args=(retriever,), batch_format="pyarrow",
                          **pool.map_batches_kwargs())


def index_fingerprint(cfg: RetrieverConfig) -> str:
    """What identifies the index a retrieval searched: a rebuilt index means other passages."""
    if cfg.backend == "elasticsearch":
        es = ElasticsearchRetriever(cfg.elasticsearch, k1=cfg.k1, b=cfg.b)
        try:
            return f"{cfg.elasticsearch.url}/{cfg.elasticsearch.index_name} ({es.count()} passages)"
        finally:
            es.close()
    params = json.loads((Path(cfg.index_dir) / PARAMS_FILE).read_text())
    return params.get("corpus_digest") or json.dumps(params, sort_keys=True)


def _run_params(cfg: RetrieveConfig, table: pa.Table) -> dict[str, Any]:
    """What makes a retrieved row what it is; rows from different params must not be mixed."""
    r = cfg.retriever
    return {"backend": r.backend, "index": index_fingerprint(r), "top_k": r.top_k, "k1": r.k1, "b": r.b,
            "max_query_chars": r.max_query_chars, "records_digest": table_digest(table, ["id", "query"])}


def run_retrieve(cfg: RetrieveConfig) -> StageResult:
    """Retrieve passages for every record of ``cfg.data`` and write Parquet parts.

    Output in ``cfg.output_dir``: ``retrieved/`` (Parquet parts of the record schema,
    every input record exactly once, by id; read them with :func:`read_retrieved`),
    ``errors.jsonl`` (the rows with an error), ``dropped.jsonl`` (input rows the loader did
    not make records, and why), run info. Each finished block is written as its own part
    (:mod:`rac.parts`): a rerun into the same ``output_dir`` with the same settings, data
    and index skips the ids already written and searches again the rows the server failed.
    """
    import ray

    check_retriever(cfg.retriever)
    loaded, _ = prepare_data(cfg.data)
    out = Path(cfg.output_dir)
    parts_dir = out / RETRIEVED_DIR
    table = records_to_table(loaded.records)
    writer = PartWriter(parts_dir)
    if not cfg.resume:
        clear_parts(parts_dir)
    check_params(parts_dir, _run_params(cfg, table), restart_hint="pass --resume false to start over")
    retried = drop_error_rows(parts_dir, SERVER_FAILURE)
    done = written_ids(parts_dir)
    todo = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=pa.array(sorted(done), pa.string()))))
    logger.info("retrieve: %d records, %d already written, %d to search", table.num_rows,
                table.num_rows - todo.num_rows, todo.num_rows)
    if todo.num_rows:
        bs = cfg.pool.batch_size
        blocks = [todo.slice(i, bs) for i in range(0, todo.num_rows, bs)]
        results = retrieve_dataset(ray.data.from_arrow(blocks), cfg.retriever, cfg.pool)
        for part in results.iter_batches(batch_size=None, batch_format="pyarrow"):
            writer.write(part)
            logger.info("retrieve: %d/%d rows written", writer.rows, todo.num_rows)

    written = read_parts(parts_dir).select(["id", "query", "passages", "error"])
    ids = written.column("id").to_pylist()
    if len(ids) != len(loaded.records) or set(ids) != {r["id"] for r in loaded.records}:
        raise DataFormatError(parts_dir, "", f"the parts hold {len(ids)} rows ({len(set(ids))} distinct ids) for "
                                             f"{len(loaded.records)} records; delete the folder and run again")
    errors = written.filter(pc.is_valid(written.column("error"))).select(["id", "query", "error"])
    # A query none of whose words is in the corpus gets no passage: no error, nothing to ground on.
    found = pc.fill_null(pc.list_value_length(written.column("passages")), 0)
    with_passages = pc.sum(pc.greater(found, 0)).as_py() or 0
    with (out / "errors.jsonl").open("w") as f:
        for row in errors.to_pylist():
            f.write(json.dumps(row) + "\n")
    with (out / "dropped.jsonl").open("w") as f:
        for row in loaded.dropped:
            f.write(json.dumps(row) + "\n")
    failed = [e for e in errors.to_pylist() if e["error"].startswith(SERVER_FAILURE)]
    result = StageResult.with_failures(
        "retrieve", failed, out / "errors.jsonl", rows_in=loaded.rows_in, rows_out=len(ids),
        details={"backend": cfg.retriever.backend, "records": len(loaded.records),
                 "skipped": table.num_rows - todo.num_rows, "searched": todo.num_rows, "retried": retried,
                 "with_passages": with_passages, "without_passages": len(ids) - errors.num_rows - with_passages,
                 "error_rows": errors.num_rows, "server_failures": len(failed), "dropped_rows": len(loaded.dropped)})
    write_run_info(out, "retrieve", cfg, result=result.to_dict())
    logger.info("retrieve: %s", result)
    return result


#: Columns every reader of the retrieval output needs.
RETRIEVED_COLUMNS = ("id", "query", "question", "passages", "split", "error")


def read_retrieved(input_dir: str | Path, splits: list[str] | None = None,
                   columns: tuple[str, ...] = RETRIEVED_COLUMNS) -> pa.Table:
    """The records a retrieval run wrote (those of ``splits``, when given), sorted by id.

    ``input_dir`` is a retrieval output directory (parts under ``retrieved/``) or the folder
    of parts itself. Raises ``FileNotFoundError`` when there is no output, and
    :class:`~rac.data.loaders.DataFormatError` when ``columns`` are missing or ids repeat.
    """
    table, parts = read_stage_output(
        input_dir, RETRIEVED_DIR, columns, absent=f"no retrieval output in {input_dir}: run `python -m jobs.retrieve` "
                                                  f"first or set input_dir to its output_dir",
        expected="the record schema (rac.data.schema.RECORD_SCHEMA) written by jobs.retrieve")
    if pc.count_distinct(table.column("id")).as_py() != table.num_rows:
        raise DataFormatError(parts, "", "ids are not unique; every row needs its own stable id")
    if splits is not None:
        table = table.filter(pc.is_in(table.column("split"), value_set=pa.array(splits, type=pa.string())))
    return table.sort_by("id")
