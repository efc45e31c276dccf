"""Loaders: Qulac (JSON, column layout), ClariQ (TSV), our built-in demo set, and plain
JSONL/Parquet files of the record schema (:mod:`rac.data.schema`).

Each loader returns :class:`LoadedData`: the records, the source documents from which the
passage corpus is built (:mod:`rac.data.corpus`), and the input rows it did not turn into
records with the reason (duplicates, rows without a question), so that rows in equals
records plus dropped rows. A malformed file raises :class:`DataFormatError` naming the
file, the line or row, and the field.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rac.data.schema import PASSAGE_TYPE, REQUIRED_FIELDS, make_record

logger = logging.getLogger(__name__)

QULAC_COLUMNS = ("topic_id", "facet_id", "topic", "topic_desc", "facet_desc", "question")
CLARIQ_COLUMNS = ("topic_id", "initial_request", "topic_desc", "clarification_need", "facet_id",
                  "facet_desc", "question_id", "question", "answer")
DEMO_PATH = "demo/demo.json"


class DataFormatError(ValueError):
    """A data file that cannot be read: names the file, the line or row, and the field."""

    def __init__(self, path: str | Path, where: str, message: str):
        self.path, self.where, self.message = str(path), where, message
        super().__init__(f"{path}: {where}: {message}" if where else f"{path}: {message}")

    def __reduce__(self):  # pickled whole, so that it crosses from a Ray worker to the driver
        return type(self), (self.path, self.where, self.message)


@dataclass
class LoadedData:
    """What a loader read: records, corpus source documents, and rows it set aside."""

    name: str
    records: list[dict[str, Any]]
    #: ``{"text", "source"}`` dicts: the texts the passage corpus is built from.
    documents: list[dict[str, str]] = field(default_factory=list)
    #: ``{"row", "reason"}`` dicts: input rows that are not records, and why.
    dropped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows_in(self) -> int:
        return len(self.records) + len(self.dropped)


def read_text(path: Path, missing_hint: str) -> str:
    """The UTF-8 text of ``path``; a file that is absent, unreadable or not UTF-8 is a
    :class:`DataFormatError` naming the file (and the line of the first bad byte)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(path, "", f"file not found; {missing_hint}") from None
    except IsADirectoryError:
        raise DataFormatError(path, "", f"is a directory, not a file; {missing_hint}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataFormatError(path, f"line {line}", f"not UTF-8 text (byte {e.start}: {e.reason}); save the file "
                                                    f"as UTF-8") from None


def _lines(path: Path, text: str) -> list[tuple[int, str]]:
    """Numbered non-blank lines of ``text``; no line at all is an error (an empty file)."""
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise DataFormatError(path, "", "empty file: no records")
    return lines


def clean_text(text: str) -> str:
    """Undo the backslash-escaped quotes of the Qulac/ClariQ dumps and collapse whitespace."""
    return " ".join(text.replace("\\'", "'").replace('\\"', '"').split())


def _dedupe_key(topic_id: str, question: str) -> str:
    return topic_id + "\x00" + " ".join(question.lower().split())


class _RecordBuilder:
    """Collects records from topic/facet/question rows, deduplicating (topic, question)."""

    def __init__(self, name: str, dedupe: bool):
        self.data = LoadedData(name=name, records=[])
        self.dedupe = dedupe
        self._seen_questions: dict[str, str] = {}
        self._seen_docs: set[tuple[str, str]] = set()

    def document(self, text: str, source: str) -> None:
        text = clean_text(text)
        if text and (text, source) not in self._seen_docs:
            self._seen_docs.add((text, source))
            self.data.documents.append({"text": text, "source": source})

    def add(self, row_ref: str, record: dict[str, Any]) -> None:
        question = record.get("question")
        if not question:
            self.data.dropped.append({"row": row_ref, "id": record["id"], "reason": "no clarifying question"})
            return
        if self.dedupe:
            key = _dedupe_key(record["topic_id"] or "", question)
            if key in self._seen_questions:
                self.data.dropped.append({"row": row_ref, "id": record["id"],
                                          "reason": f"duplicate of {self._seen_questions[key]}"})
                return
            self._seen_questions[key] = record["id"]
        self.data.records.append(record)


def load_qulac(path: str | Path, dedupe: bool = True) -> LoadedData:
    """Qulac's ``qulac.json``: one object of columns, each a map from row key to value.

    One record per row: query = ``topic``, question = ``question``, topic/facet ids from
    the row. With ``dedupe`` (the default) a question repeated for several facets of the
    same topic is kept once (Qulac asks each topic's questions under every facet).
    Passage sources: ``topic_desc`` and ``facet_desc``.
    """
    path = Path(path)
    text = read_text(path, "set data.path to Qulac's qulac.json")
    try:
        columns = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"line {e.lineno}", f"not valid JSON ({e.msg})") from None
    if not isinstance(columns, dict):
        raise DataFormatError(path, "", "expected one JSON object of columns (pandas orient='columns')")
    for col in QULAC_COLUMNS:
        if not isinstance(columns.get(col), dict):
            raise DataFormatError(path, f"column '{col}'", "missing: Qulac needs columns " + ", ".join(QULAC_COLUMNS))
    builder = _RecordBuilder("qulac", dedupe)
    for key in columns["topic"]:
        row = {}
        for col in QULAC_COLUMNS:
            value = columns[col].get(key)
            if value is None or (col != "question" and str(value).strip() == ""):
                raise DataFormatError(path, f"row '{key}'", f"field '{col}' is missing or empty")
            row[col] = value
        if not isinstance(row["topic"], str) or not isinstance(row["question"], str):
            raise DataFormatError(path, f"row '{key}'", "fields 'topic' and 'question' must be strings")
        topic_id = str(row["topic_id"])
        builder.document(str(row["topic_desc"]), "topic_desc")
        builder.document(str(row["facet_desc"]), "facet_desc")
        builder.add(f"row '{key}'", make_record(
            id=f"qulac-{key}", query=clean_text(row["topic"]), question=clean_text(row["question"]),
            topic_id=topic_id, facet_id=f"{topic_id}-{row['facet_id']}"))
    logger.info("qulac: %d records, %d set aside, %d source documents from %s",
                len(builder.data.records), len(builder.data.dropped), len(builder.data.documents), path)
    return builder.data


def load_clariq(path: str | Path, dedupe: bool = True) -> LoadedData:
    """ClariQ TSV (``train.tsv``/``dev.tsv``): topic_id, initial_request, topic_desc,
    clarification_need, facet_id, facet_desc, question_id, question, answer.

    Rows without a question (ClariQ lists topics that need no clarification) are set
    aside with that reason.
    """
    path = Path(path)
    text = read_text(path, "set data.path to a ClariQ TSV file")
    builder = _RecordBuilder("clariq", dedupe)
    lines = text.split("\n")
    if not text.strip():
        raise DataFormatError(path, "line 1", "empty file; expected a header row")
    if lines[-1].strip():
        # Every line of a TSV ends with a line break; a last line without one is a file cut
        # short, and its last field may be cut too.
        raise DataFormatError(path, f"line {len(lines)}", "the file ends inside a line (no line break after the "
                                                          "last row): cut short? If it is complete, end it with "
                                                          "a line break")
    header = lines[0].rstrip("\r").split("\t")
    missing = [c for c in CLARIQ_COLUMNS if c not in header]
    if missing:
        raise DataFormatError(path, "line 1", f"header lacks column(s) {', '.join(missing)}")
    index = {c: header.index(c) for c in CLARIQ_COLUMNS}
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataFormatError(path, f"line {lineno}",
                                  f"{len(fields)} fields, header has {len(header)} (a stray tab?)")
        row = {c: fields[i].strip() for c, i in index.items()}
        for col in ("topic_id", "initial_request"):
            if not row[col]:
                raise DataFormatError(path, f"line {lineno}", f"field '{col}' is empty")
        question = row["question"] if row["question"].lower() not in ("", "nan") else None
        if row["topic_desc"]:
            builder.document(row["topic_desc"], "topic_desc")
        if row["facet_desc"]:
            builder.document(row["facet_desc"], "facet_desc")
        qid = row["question_id"] if row["question_id"].lower() not in ("", "nan") else f"line{lineno}"
        builder.add(f"line {lineno}", make_record(
            id=f"clariq-{row['topic_id']}-{qid}", query=clean_text(row["initial_request"]),
            question=clean_text(question) if question else None, topic_id=row["topic_id"],
            facet_id=row["facet_id"] or None))
    return builder.data


def load_demo(path: str | Path | None = None) -> LoadedData:
    """The built-in demo set (written for this project): ambiguous queries, one passage
    per facet, and a gold clarifying question per facet."""
    if path is None:
        text = resources.files("rac.data").joinpath(DEMO_PATH).read_text(encoding="utf-8")
        path = f"rac/data/{DEMO_PATH}"
    else:
        text = read_text(Path(path), "set data.path to a demo-format JSON file")
    try:
        demo = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"line {e.lineno}", f"not valid JSON ({e.msg})") from None
    topics = demo.get("topics") if isinstance(demo, dict) else None
    if not isinstance(topics, list) or not topics:
        raise DataFormatError(path, "", "not a demo file with a non-empty 'topics' list")
    builder = _RecordBuilder("demo", dedupe=True)
    for i, topic in enumerate(topics):
        facets = topic.get("facets") if isinstance(topic, dict) else None
        if not isinstance(facets, list):
            raise DataFormatError(path, f"topic {i}", "expected an object with a 'facets' list")
        _check_strings(path, f"topic {i}", topic, ("topic_id", "query", "description"))
        builder.document(topic["description"], "topic_description")
        for j, facet in enumerate(facets):
            _check_strings(path, f"topic {i}, facet {j}", facet, ("facet_id", "passage", "question"))
            builder.document(facet["passage"], "facet_passage")
            builder.add(f"topic {i}", make_record(
                id=facet["facet_id"], query=topic["query"], question=facet["question"],
                topic_id=topic["topic_id"], facet_id=facet["facet_id"]))
    return builder.data


def _check_strings(path: str | Path, where: str, obj: Any, names: tuple[str, ...]) -> None:
    if not isinstance(obj, dict):
        raise DataFormatError(path, where, f"expected an object with fields {', '.join(names)}")
    for name in names:
        if not isinstance(obj.get(name), str):
            raise DataFormatError(path, where, f"field '{name}' is missing or not a string")


def _check_record(rec: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise DataFormatError(path, where, f"expected an object with fields {', '.join(REQUIRED_FIELDS)}")
    for name in REQUIRED_FIELDS:
        if name not in rec or rec[name] is None:
            raise DataFormatError(path, where, f"field '{name}' is missing")
        if not isinstance(rec[name], str):
            raise DataFormatError(path, where, f"field '{name}' must be a string, got {type(rec[name]).__name__}")
    for name in ("question", "topic_id", "facet_id"):
        value = rec.get(name)
        if value is not None and not isinstance(value, (str, int)):
            raise DataFormatError(path, where, f"field '{name}' must be a string or null")
    passages = rec.get("passages")
    if passages is not None:
        if not isinstance(passages, list) or not all(isinstance(p, dict) and "id" in p and "text" in p
                                                     for p in passages):
            raise DataFormatError(path, where, "field 'passages' must be a list of {id, text, score}")
        passages = [{"id": str(p["id"]), "text": p["text"], "score": p.get("score")} for p in passages]
    return make_record(
        id=rec["id"], query=rec["query"], question=rec.get("question"),
        topic_id=None if rec.get("topic_id") is None else str(rec["topic_id"]),
        facet_id=None if rec.get("facet_id") is None else str(rec["facet_id"]),
        passages=passages, split=rec.get("split"), error=rec.get("error"))


def _check_unique_ids(records: list[dict[str, Any]], path: Path, where_of) -> None:
    seen: dict[str, int] = {}
    for i, rec in enumerate(records):
        if rec["id"] in seen:
            raise DataFormatError(path, where_of(i), f"field 'id': {rec['id']!r} repeats {where_of(seen[rec['id']])}")
        seen[rec["id"]] = i


def load_jsonl(path: str | Path) -> LoadedData:
    """A JSONL file of records (fields of :data:`rac.data.schema.RECORD_SCHEMA`)."""
    path = Path(path)
    records, lines = [], []
    for lineno, line in _lines(path, read_text(path, "set data.path to a JSONL file of records")):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, f"line {lineno}", f"not valid JSON ({e.msg} at column {e.colno})") from None
        records.append(_check_record(rec, path, f"line {lineno}"))
        lines.append(lineno)
    _check_unique_ids(records, path, lambda i: f"line {lines[i]}")
    return LoadedData(name=path.stem, records=records)


def load_parquet(path: str | Path) -> LoadedData:
    """A Parquet file (or directory of shards) of records."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(path, "", "not found; set data.path to a Parquet file or directory")
    table = _read_parquet(path)
    for name in REQUIRED_FIELDS:
        if name not in table.column_names:
            raise DataFormatError(path, f"column '{name}'", "missing; records need columns id and query")
    if "passages" in table.column_names and not table.schema.field("passages").type.equals(pa.list_(PASSAGE_TYPE)):
        try:
            passages = table.column("passages").cast(pa.list_(PASSAGE_TYPE))
        except (pa.ArrowException, ValueError, TypeError) as e:
            raise DataFormatError(path, "column 'passages'", f"not a list of {{id, text, score}} ({e})") from None
        table = table.set_column(table.column_names.index("passages"), "passages", passages)
    if table.num_rows == 0:
        raise DataFormatError(path, "", "no records")
    records = [_check_record(rec, path, f"row {i}") for i, rec in enumerate(table.to_pylist())]
    _check_unique_ids(records, path, lambda i: f"row {i}")
    return LoadedData(name=path.stem, records=records)


def _read_parquet(path: Path) -> pa.Table:
    """A Parquet file (or folder) read whole and decoded: a file cut short or damaged, whichever
    part of it the damage hit, is a :class:`DataFormatError` naming it."""
    try:
        table = pq.read_table(path)
        table.validate(full=True)  # e.g. strings that are not UTF-8
        return table
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataFormatError(path, "", f"not readable as Parquet ({type(e).__name__}: {e}); cut short or "
                                        f"damaged? Write it again") from None


def load_corpus_file(path: str | Path) -> list[dict[str, str]]:
    """A passage corpus given as JSONL or Parquet rows with ``id`` and ``text``."""
    path = Path(path)
    hint = "set data.corpus_path to a JSONL/Parquet corpus"
    if path.suffix == ".jsonl":
        rows = []
        for lineno, line in _lines(path, read_text(path, hint)):
            try:
                rows.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataFormatError(path, f"line {lineno}", f"not valid JSON ({e.msg})") from None
    else:
        if not path.exists():
            raise DataFormatError(path, "", f"file not found; {hint}")
        rows = [(f"row {i}", r) for i, r in enumerate(_read_parquet(path).to_pylist())]
        if not rows:
            raise DataFormatError(path, "", "no passages")
    out = []
    for where, row in rows:
        for name in ("id", "text"):
            if not isinstance(row, dict) or not isinstance(row.get(name), str) or not row[name]:
                raise DataFormatError(path, where, f"field '{name}' is missing or not a non-empty string")
        out.append({"id": row["id"], "text": row["text"], "source": str(row.get("source") or path.name)})
    return out


LOADERS = {"qulac": load_qulac, "clariq": load_clariq, "jsonl": load_jsonl, "parquet": load_parquet}


def load_data(format: str, path: str | Path | None = None, dedupe: bool = True) -> LoadedData:
    """Load records in ``format`` (``demo``, ``qulac``, ``clariq``, ``jsonl`` or ``parquet``)."""
    if format == "demo":
        return load_demo(path)
    if format in LOADERS:
        if path is None:
            raise DataFormatError("data.path", "", f"format '{format}' needs data.path")
        loaded = LOADERS[format](path, dedupe=dedupe) if format in ("qulac", "clariq") else LOADERS[format](path)
        if loaded.rows_in == 0:
            raise DataFormatError(path, "", f"no rows: an empty {format} file?")
        return loaded
    raise ValueError(f"unknown data format {format!r}; choose demo, qulac, clariq, jsonl or parquet")


def stable_hash(text: str, n: int = 16) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]
