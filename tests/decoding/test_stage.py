"""The negatives stage on real local Ray Data: every row kept, restarts lose nothing."""

from __future__ import annotations

import copy
import dataclasses
import json
import signal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs._door import run
from jobs.generate_negatives import main as negatives_job
from rac.config import ActorPoolConfig, ConfigError
from rac.data import load_data
from rac.data.schema import records_to_table
from rac.decoding import NegativesConfig, SamplingParams, read_negatives, row_seed, run_generate_negatives
from rac.decoding.stage import NEGATIVES_DIR, NegativesBatch
from rac.models.generation import GENERATION_FAILURE
from rac.parts import part_files, written_ids
from rac.retrieval import read_retrieved
from tests.e2e.procs import kill_group, start_job

LONG_QUERY = "which " * 300

BAD_ROWS = {  # id -> (record fields, expected error)
    "bad-error": ({"error": "retrieval failed: server gone"}, "input row has an error: retrieval failed"),
    "bad-none": ({"passages": None}, "no passages retrieved"),
    "bad-empty": ({"passages": []}, "no passages retrieved"),
    "bad-question": ({"question": None}, "no gold question"),
    "bad-long": ({"query": LONG_QUERY}, "prompt too long"),
}


@pytest.fixture
def retrieved_dir(tmp_path):
    """A retrieval output: 14 good T2 rows, one T2 row of each kind of bad input, T1/test rows."""
    data = load_data("demo")
    docs = [{"id": f"p{i}", "text": d["text"], "score": 1.0} for i, d in enumerate(data.documents)]
    records = []
    for i, r in enumerate(data.records[:22]):
        split = "t2" if i < 14 else ("t1" if i < 19 else "test")
        records.append({**r, "split": split, "passages": docs[i % 7: i % 7 + 2], "error": None})
    for name, (fields, _) in BAD_ROWS.items():
        records.append({**records[0], "id": name, "split": "t2", **fields})
    table = records_to_table(records)
    shards = tmp_path / "retrieve" / "retrieved"
    shards.mkdir(parents=True)
    pq.write_table(table.slice(0, 10), shards / "a.parquet")
    pq.write_table(table.slice(10), shards / "b.parquet")
    t2_ids = sorted(r["id"] for r in records if r["split"] == "t2")
    return tmp_path / "retrieve", t2_ids


def _config(model_dirs, input_dir, output_dir, alpha=0.5):
    return NegativesConfig(input_dir=str(input_dir), output_dir=str(output_dir), grounded_model=str(model_dirs[0]),
                           ungrounded_model=str(model_dirs[1]), max_prompt_tokens=128,
                           sampling=SamplingParams(alpha=alpha, max_new_tokens=12),
                           pool=ActorPoolConfig(min_size=1, max_size=1, batch_size=4))


@pytest.mark.slow
def test_every_row_kept_and_restart_skips_written_ids(ray_local, tmp_path, model_dirs, retrieved_dir):
    input_dir, t2_ids = retrieved_dir
    cfg = _config(model_dirs, input_dir, tmp_path / "neg")
    summary = run_generate_negatives(cfg)
    assert summary.rows_in == len(t2_ids) == 19
    d = summary.details
    assert (d["generated"], d["skipped"], d["error_rows"]) == (19, 0, len(BAD_ROWS))

    first = {r["id"]: r for r in read_negatives(cfg.output_dir).to_pylist()}
    assert sorted(first) == t2_ids  # each T2 id exactly once; no T1/test row
    for name, (_, error) in BAD_ROWS.items():
        assert error in first[name]["error"] and first[name]["rejected"] is None
    good = [r for r in first.values() if r["error"] is None]
    assert len(good) == 14
    for r in good:
        assert r["rejected"] is not None and r["chosen"] and r["passages_used"] >= 1
        assert len(r["provenance"]) == len(r["rejected_token_ids"]) >= 1
        assert r["mixing_rate"] == pytest.approx(sum(r["provenance"]) / len(r["provenance"]))
        assert r["alpha"] == 0.5 and r["seed"] == row_seed(cfg.seed, r["id"])
        assert r["grounded_model"].startswith(f"{model_dirs[0]}@")
        assert r["ungrounded_model"].startswith(f"{model_dirs[1]}@")
        assert r["finish_reason"] in {"eos", "question", "length"}
    assert 0 < summary.details["mean_mixing_rate"] < 1
    errors = [json.loads(line) for line in (tmp_path / "neg" / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["id"] for e in errors) == sorted(BAD_ROWS)
    assert json.loads((tmp_path / "neg" / "run_info.json").read_text())["result"]["rows_in"] == 19

    # A real SIGKILL of the running job: the job in a process of its own (with its own Ray) is
    # killed by the kernel right after its second part is written (RAC_FAULT_KILL_AFTER_PARTS),
    # then the rest of its process group, as a scheduler or the OOM killer takes a job.
    killed = dataclasses.replace(cfg, output_dir=str(tmp_path / "killed"))
    proc = start_job("jobs.generate_negatives", _argv(killed), tmp_path / "killed.log", RAC_FAULT_KILL_AFTER_PARTS="2")
    assert proc.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert kill_group(proc)  # and nothing of it is left running
    parts_dir = tmp_path / "killed" / NEGATIVES_DIR
    assert len(part_files(parts_dir)) == 2  # the parts written before the kill, whole
    kept = written_ids(parts_dir)
    lost = sorted(set(t2_ids) - kept)
    assert len(kept) == 8 and len(lost) == 11
    # And a row whose decoding raised in that run: an error row, which the rerun decodes again.
    failed = next(i for i in sorted(kept) if not i.startswith("bad-"))
    _mark_failed(parts_dir, failed)

    # The rerun, through the job's door as a user starts it: only the rows not written, and the failed one.
    assert run(NegativesConfig, negatives_job, argv=_argv(killed)) == 0
    again = json.loads((tmp_path / "killed" / "run_info.json").read_text())["result"]["details"]
    assert (again["skipped"], again["generated"], again["retried"]) == (len(kept) - 1, len(lost) + 1, 1)
    second = {r["id"]: r for r in read_negatives(killed.output_dir).to_pylist()}
    assert sorted(second) == t2_ids  # every row once: none lost, none twice
    assert not list(parts_dir.glob("*.tmp"))
    # Decoded in another process and other batches, every row comes out the same (per-row seeds).
    for i in t2_ids:
        assert (second[i]["rejected_token_ids"], second[i]["provenance"], second[i]["error"]) == \
            (first[i]["rejected_token_ids"], first[i]["provenance"], first[i]["error"])
    cfg, parts_dir = killed, parts_dir

    # Nothing left to do: no actor, no new part.
    n_parts = len(list(parts_dir.glob("part-*.parquet")))
    done = run_generate_negatives(cfg)
    assert (done.details["skipped"], done.details["generated"], done.rows_out) == (19, 0, 14)
    assert len(list(parts_dir.glob("part-*.parquet"))) == n_parts

    # Parts made with other settings are never mixed with new ones.
    with pytest.raises(ConfigError, match="alpha: 0.5 there, 0.3 now"):
        run_generate_negatives(_config(model_dirs, input_dir, tmp_path / "neg", alpha=0.3))


def _argv(cfg):
    return ["--input_dir", cfg.input_dir, "--output_dir", cfg.output_dir, "--grounded_model", cfg.grounded_model,
            "--ungrounded_model", cfg.ungrounded_model, "--max_prompt_tokens", str(cfg.max_prompt_tokens),
            "--sampling.max_new_tokens", str(cfg.sampling.max_new_tokens), "--pool.max_size", "1",
            "--pool.batch_size", "4"]


def _mark_failed(parts_dir, row_id):
    """Rewrite ``row_id`` in its part as an actor records a row whose decoding raised."""
    for part in parts_dir.glob("part-*.parquet"):
        table = pq.read_table(part)
        if row_id in table.column("id").to_pylist():
            rows = table.to_pylist()
            for r in rows:
                if r["id"] == row_id:
                    r.update(rejected=None, rejected_token_ids=None, provenance=None, mixing_rate=None,
                             error=f"{GENERATION_FAILURE}OutOfMemoryError: simulated")
            pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), part)


def test_reading_negatives_never_written_names_the_job(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `python -m jobs.generate_negatives --output_dir"):
        read_negatives(tmp_path)


def test_a_row_that_fails_to_decode_fails_alone(model_dirs, retrieved_dir, tmp_path):
    """The stage class in-process: when decoding a batch raises, the batch is decoded row
    by row and only the row that raises gets an error."""
    input_dir, _ = retrieved_dir
    cfg = _config(model_dirs, input_dir, tmp_path / "neg")
    stage = NegativesBatch(cfg, {"grounded_model": "g@0", "ungrounded_model": "u@0"})
    table = read_retrieved(input_dir, ["t2"])
    batch = table.filter(pc.invert(pc.starts_with(table.column("id"), "bad-"))).slice(0, 4)
    victim = batch.column("id").to_pylist()[2]
    generate = stage.decoder.generate

    def flaky(grounded_prompts, ungrounded_prompts, seeds):
        if row_seed(cfg.seed, victim) in seeds:
            raise RuntimeError("CUDA out of memory (simulated)")
        return generate(grounded_prompts, ungrounded_prompts, seeds)

    stage.decoder.generate = flaky
    out = stage(batch).to_pylist()
    assert [r["id"] for r in out] == batch.column("id").to_pylist()
    assert out[2]["error"] == f"{GENERATION_FAILURE}RuntimeError: CUDA out of memory (simulated)"
    assert out[2]["rejected"] is None
    assert all(r["error"] is None and r["rejected"] is not None for i, r in enumerate(out) if i != 2)


def test_tokenizer_mismatch_stops_the_job_before_decoding(ray_local, tmp_path, model_dirs, tokenizer,
                                                          retrieved_dir, capsys):
    """Through the job's door: exit 1 with the reason, nothing written; a bad value exits 2."""
    # The ungrounded model's weights beside a tokenizer with one token more.
    odd = tmp_path / "ungrounded-other-tokenizer"
    other = copy.deepcopy(tokenizer)
    other.add_tokens(["<only-here>"])
    other.save_pretrained(str(odd))
    (odd / "config.json").write_text((model_dirs[1] / "config.json").read_text())
    cfg = _config(model_dirs, retrieved_dir[0], tmp_path / "neg")
    argv = _argv(cfg) + ["--ungrounded_model", str(odd)]
    assert run(NegativesConfig, negatives_job, argv=argv) == 1
    assert "do not share a tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "neg").exists()
    assert run(NegativesConfig, negatives_job, argv=_argv(cfg) + ["--sampling.alpha", "2"]) == 2
