"""Bad input files, fuzzed: every loader and the index job's door on corrupted real files.

Seeded. The files are the demo set written in each format the loaders read (Qulac JSON,
ClariQ TSV, JSONL and Parquet records, JSONL and Parquet corpora, a demo-format JSON). The
corruptions: a cut at a random byte, flipped bytes, non-UTF-8 bytes, an empty file, a huge
field. Each case either loads (a corruption can leave a valid file: a flipped letter) or
raises :class:`DataFormatError` naming the file (and the line, in the line-based formats);
anything else (another exception, a hang) fails the test, and so does a file cut
mid-record that loads as if complete.
"""

from __future__ import annotations

import json
import random
import re
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rac.data import DataFormatError, load_corpus_file, load_data, records_to_table
from rac.data.loaders import CLARIQ_COLUMNS, DEMO_PATH, load_clariq, load_demo, load_jsonl, load_parquet, load_qulac

SEED = 13
CUTS, FLIPS, NON_UTF8 = 20, 20, 8
HUGE = 300_000  # characters: over csv's default field limit of 131,072
#: Formats whose error names a line (where the file has any).
LINE_FORMATS = {"clariq", "jsonl", "corpus_jsonl"}


def _sources(root: Path) -> dict[str, tuple[object, Path]]:
    """The demo set in every format a loader reads: name -> (loader, file)."""
    demo = load_data("demo")
    records, documents = demo.records[:24], demo.documents[:30]
    files = {}
    path = root / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    files["jsonl"] = (load_jsonl, path)
    path = root / "records.parquet"
    pq.write_table(records_to_table(records), path)
    files["parquet"] = (load_parquet, path)
    path = root / "qulac.json"
    columns = {c: {} for c in ("topic_id", "facet_id", "topic", "topic_desc", "facet_desc", "question")}
    for i, r in enumerate(records):
        for col, value in (("topic_id", i // 3), ("facet_id", i), ("topic", r["query"]),
                           ("topic_desc", documents[i // 3]["text"]), ("facet_desc", documents[i]["text"]),
                           ("question", r["question"])):
            columns[col][str(i)] = value
    path.write_text(json.dumps(columns, indent=1))
    files["qulac"] = (load_qulac, path)
    path = root / "train.tsv"
    rows = ["\t".join(CLARIQ_COLUMNS)] + [
        "\t".join([r["topic_id"], r["query"], documents[i // 3]["text"], "2", r["facet_id"], documents[i]["text"],
                   f"Q{i}", r["question"], "yes"]) for i, r in enumerate(records)]
    path.write_text("\n".join(rows) + "\n")
    files["clariq"] = (load_clariq, path)
    corpus = [{"id": f"p{i}", "text": d["text"], "source": d["source"]} for i, d in enumerate(documents)]
    path = root / "corpus.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in corpus))
    files["corpus_jsonl"] = (load_corpus_file, path)
    path = root / "corpus.parquet"
    pq.write_table(pa.Table.from_pylist(corpus), path)
    files["corpus_parquet"] = (load_corpus_file, path)
    path = root / "demo.json"
    path.write_bytes((Path(__file__).resolve().parents[2] / "rac" / "data" / DEMO_PATH).read_bytes())
    files["demo"] = (load_demo, path)
    return files


def _huge(name: str, data: bytes) -> bytes:
    """The same file with one field of HUGE characters."""
    big = "w" * HUGE
    if name in ("jsonl", "corpus_jsonl"):
        row = json.loads(data.splitlines()[0])
        row["id"] = "huge"
        row["query" if name == "jsonl" else "text"] = big
        return data + (json.dumps(row) + "\n").encode()
    if name == "clariq":
        lines = data.decode().rstrip("\n").split("\n")
        fields = lines[1].split("\t")
        fields[5] = big
        fields[6] = "Qhuge"
        return ("\n".join([*lines, "\t".join(fields)]) + "\n").encode()
    if name in ("qulac", "demo"):
        return data.replace(b"the", big.encode(), 1)
    table = pq.read_table(pa.BufferReader(data))
    col = "query" if name == "parquet" else "text"
    values = table.column(col).to_pylist()
    values[0] = big
    sink = pa.BufferOutputStream()
    pq.write_table(table.set_column(table.column_names.index(col), col, pa.array(values, pa.string())), sink)
    return sink.getvalue().to_pybytes()


def _cases(files: dict[str, tuple[object, Path]]):
    """(case id, format, corrupted bytes, cut mid-record?) for every corruption of every file."""
    rng = random.Random(SEED)
    for name, (_, path) in sorted(files.items()):
        data = path.read_bytes()
        end = len(data.rstrip())
        for k in range(CUTS):
            pos = rng.randrange(1, end)
            cut = data[:pos]
            if name in ("jsonl", "corpus_jsonl"):  # cut just before a line break: the record is whole
                mid_record = data[pos - 1:pos] != b"\n" and data[pos:pos + 1] != b"\n"
            else:
                mid_record = True
            yield f"{name}-cut{k}@{pos}", name, cut, mid_record
        for k in range(FLIPS):
            flipped = bytearray(data)
            for pos in rng.sample(range(len(data)), rng.randint(1, 4)):
                flipped[pos] ^= rng.randint(1, 255)
            yield f"{name}-flip{k}", name, bytes(flipped), False
        for k in range(NON_UTF8):
            pos = rng.randrange(0, end)
            yield f"{name}-nonutf8{k}@{pos}", name, data[:pos] + b"\xff\xfe\x80" + data[pos:], False
        yield f"{name}-empty", name, b"", True
        yield f"{name}-huge", name, _huge(name, data), False


def _alarm(signum, frame):
    raise TimeoutError("a loader took over 10 s on one small file (a hang?)")


def test_corrupted_files_load_or_name_the_file(tmp_path):
    (tmp_path / "src").mkdir()
    files = _sources(tmp_path / "src")
    for loader, path in files.values():  # the sources themselves are valid
        assert loader(path)
    work = tmp_path / "case"
    work.mkdir()
    outcomes = {"loaded": 0, "refused": 0}
    huge_loaded = 0
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case, name, data, mid_record in _cases(files):
            loader, source = files[name]
            path = work / source.name
            path.write_bytes(data)
            signal.alarm(10)
            try:
                loader(path)
            except DataFormatError as e:
                msg = str(e)
                assert msg.startswith(f"{path}: "), (case, msg)
                if name in LINE_FORMATS and data.strip():
                    assert re.search(r": line \d+: ", msg), (case, msg)
                outcomes["refused"] += 1
                continue
            except Exception as e:  # noqa: BLE001 - the failure this test exists to find
                pytest.fail(f"{case}: {type(e).__name__}: {e}")
            finally:
                signal.alarm(0)
            assert not mid_record, f"{case}: a file cut mid-record loaded as complete"
            outcomes["loaded"] += 1
            huge_loaded += case.endswith("-huge")
    finally:
        signal.signal(signal.SIGALRM, previous)
    n = len(files) * (CUTS + FLIPS + NON_UTF8 + 2)
    assert sum(outcomes.values()) == n >= 300
    assert outcomes["refused"] > n // 2  # most corruptions are caught, not silently read
    assert huge_loaded == len(files)  # a long field is not a damaged file
    print(f"fuzz: {n} cases, {outcomes}")


def test_a_corpus_without_a_searchable_word_is_refused(tmp_path):
    from rac.data.config import DataConfig
    from rac.retrieval.stage import check_corpus

    path = tmp_path / "corpus.jsonl"
    path.write_text('{"id": "p1", "text": "!!! ---"}\n{"id": "p2", "text": "... ?"}\n')
    corpus = load_corpus_file(path)
    with pytest.raises(DataFormatError, match=rf"{path}: no passage of the corpus \(2 passages\) has a searchable"):
        check_corpus(corpus, DataConfig(corpus_path=str(path)))
    check_corpus([*corpus, {"id": "p3", "text": "jaguar"}], DataConfig(corpus_path=str(path)))


@pytest.mark.parametrize("kind", ["jsonl-cut", pytest.param("clariq-non-utf8", marks=pytest.mark.slow),
                                  pytest.param("corpus-no-word", marks=pytest.mark.slow)])
def test_the_index_job_exits_1_naming_the_file(tmp_path, kind):
    """Through the door a user runs, in its own process: exit 1, the file (and line) named, no
    traceback. (Every door meets every class of input in this process in
    tests/e2e/test_exit_codes.py; a job process costs 10-20 s, so CI runs one family here.)"""
    from tests.e2e.test_jobs import run_job

    (tmp_path / "src").mkdir()
    files = _sources(tmp_path / "src")
    args = ["--config", "configs/index.yaml", "--output_dir", str(tmp_path / "out")]
    if kind == "jsonl-cut":
        path = files["jsonl"][1]
        data = path.read_bytes()
        path.write_bytes(data[: data.index(b"\n", len(data) // 2) - 5])  # cut inside a record
        args += ["--data.format", "jsonl", "--data.path", str(path)]
        expected = rf"{path}: line \d+: not valid JSON"
    elif kind == "clariq-non-utf8":
        path = files["clariq"][1]
        data = path.read_bytes()
        path.write_bytes(data[:200] + b"\xff" + data[200:])
        args += ["--data.format", "clariq", "--data.path", str(path)]
        expected = rf"{path}: line \d+: not UTF-8 text"
    else:
        path = tmp_path / "corpus.jsonl"
        path.write_text('{"id": "p1", "text": "!!! ---"}\n')
        args += ["--data.corpus_path", str(path)]
        expected = rf"{path}: no passage of the corpus \(1 passages\) has a searchable word"
    proc = run_job("jobs.index", *args, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert re.search(expected, proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
