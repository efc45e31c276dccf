"""Resumable stage output (rac.parts) and the one reader of the retrieval output."""

import pyarrow as pa
import pytest

from rac.config import ConfigError
from rac.data.loaders import DataFormatError
from rac.durable import read_json, write_json
from rac.parts import (
    PARAMS_FILE,
    PartWriter,
    check_params,
    drop_error_rows,
    part_files,
    read_parts,
    read_stage_output,
    written_ids,
)
from rac.retrieval import read_retrieved


def _rows(ids, error=None):
    return pa.table({"id": ids, "query": [f"q{i}" for i in ids], "error": [error] * len(ids)},
                    schema=pa.schema([("id", pa.string()), ("query", pa.string()), ("error", pa.string())]))


def test_parts_are_whole_or_absent_and_failures_are_dropped_for_retry(tmp_path):
    writer = PartWriter(tmp_path / "parts")
    writer.write(_rows(["a", "b"]))
    writer.write(_rows([]))  # an empty block writes no part
    writer.write(_rows(["c"], error="retrieval failed: timeout"))
    (tmp_path / "parts" / ".part-x-00009.parquet.12345678.tmp").write_bytes(b"PAR1 half a file")
    assert (writer.parts, writer.rows) == (2, 3)
    assert written_ids(tmp_path / "parts") == {"a", "b", "c"}  # the temporary file is not a part
    assert drop_error_rows(tmp_path / "parts", "retrieval failed: ") == 1
    assert written_ids(tmp_path / "parts") == {"a", "b"}
    PartWriter(tmp_path / "parts")  # a new run removes what a killed one was writing
    assert not list((tmp_path / "parts").glob("*.tmp"))


def test_parts_made_with_other_settings_are_refused(tmp_path):
    check_params(tmp_path, {"top_k": 3, "index": "abc"}, restart_hint="pass --resume false")
    assert (tmp_path / PARAMS_FILE).is_file()
    check_params(tmp_path, {"top_k": 3, "index": "abc"}, restart_hint="pass --resume false")  # same: fine
    with pytest.raises(ConfigError, match=r"top_k: 3 there, 5 now.*pass --resume false.*new directory"):
        check_params(tmp_path, {"top_k": 5, "index": "abc"}, restart_hint="pass --resume false")
    (tmp_path / PARAMS_FILE).unlink()
    PartWriter(tmp_path).write(_rows(["a"]))
    with pytest.raises(ConfigError, match=f"parts without {PARAMS_FILE}"):
        check_params(tmp_path, {"top_k": 3}, restart_hint="pass --resume false")


def test_reading_stage_output_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `python -m jobs.retrieve` first"):
        read_retrieved(tmp_path)
    (tmp_path / "retrieved").mkdir()
    PartWriter(tmp_path / "retrieved").write(_rows(["a"]))
    with pytest.raises(DataFormatError, match=r"columns \['question', 'passages', 'split'\] are missing"):
        read_retrieved(tmp_path)
    table, folder = read_stage_output(tmp_path, "retrieved", ["id"], absent="", expected="")
    assert folder == tmp_path / "retrieved" and table.num_rows == 1
    PartWriter(tmp_path / "retrieved").write(_rows(["a"]))
    with pytest.raises(DataFormatError, match="ids are not unique"):
        read_retrieved(tmp_path, columns=("id", "query"))


def test_a_part_cut_short_is_deleted_and_its_rows_redone(tmp_path):
    parts = tmp_path / "parts"
    writer = PartWriter(parts)
    writer.write(_rows(["a", "b"]))
    writer.write(_rows(["c", "d"]))
    cut = part_files(parts)[1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a disk that lost the tail of a part
    with pytest.raises(DataFormatError, match=f"{cut}: not a readable Parquet file.*cut short"):
        read_parts(parts)
    PartWriter(parts)  # the next run starts: the part is deleted, its rows are absent, so done again
    assert written_ids(parts) == {"a", "b"}


def test_json_cut_short_reads_as_absent_and_params_cut_short_restart_the_parts(tmp_path):
    write_json(tmp_path / "m.json", {"stage": "retrieve", "rows": list(range(50))})
    text = (tmp_path / "m.json").read_text()
    assert read_json(tmp_path / "m.json") == {"stage": "retrieve", "rows": list(range(50))}
    assert not list(tmp_path.glob("*.tmp"))
    for cut in (0, 1, len(text) // 2, len(text) - 1):
        (tmp_path / "m.json").write_text(text[:cut])
        assert read_json(tmp_path / "m.json") is None
    (tmp_path / "m.json").write_bytes(b"\xff\xfe{")
    assert read_json(tmp_path / "m.json") is None
    assert read_json(tmp_path / "absent.json") is None

    (tmp_path / "parts").mkdir()
    check_params(tmp_path / "parts", {"top_k": 3}, restart_hint="")
    PartWriter(tmp_path / "parts").write(_rows(["a"]))
    params = tmp_path / "parts" / PARAMS_FILE
    params.write_text(params.read_text()[:5])
    check_params(tmp_path / "parts", {"top_k": 3}, restart_hint="")  # not trusted, not crashed on
    assert written_ids(tmp_path / "parts") == set()  # rows that cannot be matched to settings: redone
    assert read_json(params) == {"top_k": 3}
