"""Resumable stage output (rac.parts) and the one reader of the retrieval output."""

import pyarrow as pa
import pytest

from rac.config import ConfigError
from rac.data.loaders import DataFormatError
from rac.parts import PARAMS_FILE, PartWriter, check_params, drop_error_rows, read_stage_output, written_ids
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
