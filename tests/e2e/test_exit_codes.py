"""Every door into every class of ending: 0 done, 1 bad input or a failed service or resource,
2 bad config. Each case checks the exit code, that stderr holds a message and no traceback,
and that the message names what to fix.

The doors run in this process (``jobs._door.run``, as ``python -m jobs.<stage>`` calls it) on
the session's Ray, so that the whole matrix costs seconds; tests/data/test_fuzz.py and
tests/e2e/test_jobs.py run doors in processes of their own.
"""

from __future__ import annotations

import importlib
import logging
import re
import subprocess
import sys

import pytest

from jobs._door import run
from rac.data import load_data, records_to_table
from rac.testing.tiny import demo_texts, tiny_causal_lm, train_tiny_tokenizer

DOORS = {  # module -> config class name
    "index": "IndexConfig", "retrieve": "RetrieveConfig", "generate_negatives": "NegativesConfig",
    "train_sft": "SFTConfig", "train_rac": "RACConfig", "evaluate": "EvaluateConfig",
    "prepare_model": "PrepareModelConfig", "pipeline": "PipelineConfig",
}


@pytest.fixture(scope="module")
def negatives_inputs(tmp_path_factory):
    """A retrieval output (6 T2 rows), a tiny model, and one that raises on every prompt (its
    vocabulary is smaller than the shared tokenizer's, so its embedding lookup fails)."""
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("negatives-inputs")
    tokenizer = train_tiny_tokenizer(demo_texts())
    for name, vocab in (("good", None), ("broken", 64)):
        model = tiny_causal_lm(tokenizer, seed=1)
        if vocab:
            model.resize_token_embeddings(vocab)
        model.save_pretrained(str(root / name))
        tokenizer.save_pretrained(str(root / name))
    data = load_data("demo")
    passages = [{"id": f"p{i}", "text": d["text"], "score": 1.0} for i, d in enumerate(data.documents[:3])]
    records = [{**r, "split": "t2", "passages": passages, "error": None} for r in data.records[:6]]
    (root / "retrieve" / "retrieved").mkdir(parents=True)
    pq.write_table(records_to_table(records), root / "retrieve" / "retrieved" / "part-0.parquet")
    return root


def _case(door: str, kind: str, tmp_path, dead_url, negatives_inputs) -> tuple[list[str], int, str]:
    """argv, expected exit code, and a pattern of the message (what to fix) for one case."""
    out = ["--output_dir", str(tmp_path / "out")]
    es = ["--retriever.elasticsearch.url", dead_url, "--retriever.elasticsearch.max_retries", "0"]
    server = rf"Elasticsearch at {dead_url} failed .*Check that the server is up"
    bad = tmp_path / "records.jsonl"
    bad.write_text('{"id": "a", "query": "jaguar"}\n{"id": "b"}\n')
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("")
    neg = ["--input_dir", str(negatives_inputs / "retrieve"), "--grounded_model", str(negatives_inputs / "good"),
           "--ungrounded_model", str(negatives_inputs / "good"), "--sampling.max_new_tokens", "4",
           "--pool.max_size", "1", "--pool.batch_size", "3", *out]
    missing = str(tmp_path / "no-retrieval-output")
    model = ["--model.path", str(negatives_inputs / "good")]
    cases = {
        ("index", "config"): (["--retriever.b", "1.5"], 2, r"retriever\.b must be in \[0, 1\], got 1\.5"),
        ("index", "input"): (["--data.format", "jsonl", "--data.path", str(bad), *out], 1,
                             rf"{bad}: line 2: field 'query' is missing"),
        ("index", "service"): ([*es, *out], 1, server),
        ("index", "resource"): (["--output_dir", str(not_a_dir / "out")], 1, rf"Not a directory: '{not_a_dir}"),
        ("retrieve", "config"): (["--retriever.top_kk", "3"], 2, r"unknown config key 'retriever\.top_kk'\. "
                                                                 r"Did you mean 'retriever\.top_k'"),
        ("retrieve", "input"): (["--retriever.index_dir", str(tmp_path / "no-index"), *out], 1,
                                r"no embedded BM25 index in .*run `python -m jobs\.index` first"),
        ("retrieve", "service"): ([*es, *out], 1, server),
        ("generate_negatives", "config"): ([*neg, "--sampling.alpha", "2"], 2, r"alpha must be in \[0, 1\], got 2"),
        ("generate_negatives", "input"): ([*neg, "--input_dir", missing], 1,
                                          r"no retrieval output .*run `python -m jobs\.retrieve` first"),
        ("generate_negatives", "service"): (
            [*neg, "--ungrounded_model", str(negatives_inputs / "broken")], 1,
            r"stage negatives is incomplete: 6 of 6 rows failed \(first: generation failed: .*\)\. They are listed "
            rf"in {tmp_path}/out/errors\.jsonl.*run the same command again: it redoes exactly those rows"),
        ("generate_negatives", "done"): (neg, 0, r"^$"),
        ("train_sft", "config"): (["--input_dirr", "x"], 2, r"unknown config key 'input_dirr'\. Did you mean "
                                                           r"'input_dir'"),
        ("train_sft", "input"): (["--input_dir", missing, *model, *out], 1,
                                 rf"no Parquet files in {missing}; .*run `python -m jobs.retrieve` first"),
        ("train_rac", "config"): (["--gamma", "1.5"], 2, r"gamma must be in \[0, 1\], got 1\.5"),
        ("train_rac", "input"): (["--input_dir", missing, *model, *out], 1,
                                 rf"no Parquet files in {missing}; run `python -m jobs.generate_negatives"),
        ("evaluate", "config"): (["--output_dirr", "x"], 2, r"unknown config key 'output_dirr'\. Did you mean "
                                                            r"'output_dir'"),
        ("evaluate", "input"): (["--input_dir", missing, *out], 1,
                                r"systems\[grounded-sft\]\.path \S*outputs/sft/grounded is not a Hugging Face model "
                                r"directory \(no config\.json\); train that model first"),
        ("prepare_model", "config"): (["--overwrite", "maybe"], 2, r"overwrite must be true or false, got 'maybe'"),
        ("prepare_model", "absent"): (["--gguf_file", str(tmp_path / "none.gguf"), *out], 1,
                                      rf"gguf_file {tmp_path}/none\.gguf does not exist"),
        ("prepare_model", "input"): (["--gguf_file", str(bad), *out], 1,
                                     rf"{bad}: not a readable GGUF model .*set gguf_file"),
        ("pipeline", "config"): (["--stages", "[index, train]"], 2, r"unknown stage\(s\) \['train'\]"),
        ("pipeline", "model"): (["--run_dir", str(tmp_path / "run"), "--base_model", str(tmp_path / "Llama-3.1-8b")],
                                2, rf"base_model {tmp_path}/Llama-3\.1-8b is not a Hugging Face model directory "
                                   r"\(no config\.json\), and a run writes no model there"),
        ("pipeline", "input"): (["--run_dir", str(tmp_path / "run"), "--stages", "[index]", "--data.format",
                                 "jsonl", "--data.path", str(bad)], 1, rf"{bad}: line 2: field 'query' is missing"),
        ("pipeline", "service"): (["--run_dir", str(tmp_path / "run"), "--stages", "[index, retrieve]",
                                   *es], 1, server),
    }
    return cases[(door, kind)]


CASES = ["index-config", "index-input", "index-service", "index-resource",
         "retrieve-config", "retrieve-input", "retrieve-service",
         "generate_negatives-config", "generate_negatives-input", "generate_negatives-service",
         "generate_negatives-done", "train_sft-config", "train_sft-input", "train_rac-config", "train_rac-input",
         "evaluate-config", "evaluate-input", "prepare_model-config", "prepare_model-absent", "prepare_model-input",
         "pipeline-config", "pipeline-model", "pipeline-input", "pipeline-service"]


@pytest.mark.parametrize("case", CASES)
def test_each_door_exits_0_1_or_2_with_a_message_and_no_traceback(case, ray_local, tmp_path, dead_url,
                                                                  negatives_inputs, capfd, monkeypatch):
    door, kind = case.split("-")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # the door logs to this test's stderr
    argv, code, message = _case(door, kind, tmp_path, dead_url, negatives_inputs)
    module = importlib.import_module(f"jobs.{door}")
    config_cls = getattr(module, DOORS[door])
    main = (lambda cfg: module.main(cfg, None)) if door == "pipeline" else module.main
    assert run(config_cls, main, argv=argv, use_ray=door != "prepare_model",
               preflight=getattr(module, "preflight", None)) == code
    err = capfd.readouterr().err
    # In one process, Ray Data's own log handlers still hold the stderr an earlier test captured,
    # and logging reports writing to it ("--- Logging error ---" ... "Arguments: ..."): not the door's doing.
    err = re.sub(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", "", err, flags=re.S)
    assert "Traceback" not in err, err[-1500:]
    lines = [line for line in err.splitlines() if line.startswith(("error: ", "config error: "))]
    if code == 0:
        assert not lines, err[-2000:]
        return
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("config error: " if code == 2 else "error: ")
    text = err[err.index(lines[0]):]  # the message (a reason quoted in it may span lines)
    assert re.search(message, text, re.S), text


def test_pipeline_from_without_a_stage_exits_2():
    from tests.e2e.procs import REPO, job_env

    proc = subprocess.run([sys.executable, "-m", "jobs.pipeline", "--from"], cwd=REPO, env=job_env(),
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr.strip()) == (2, "config error: --from needs a stage name")


def test_a_user_error_raised_in_a_ray_task_is_reported_as_itself(ray_local, capfd, monkeypatch):
    """Ray hands the driver a RayTaskError whose text is the worker's traceback; the door
    reports the error inside it."""
    from rac.data import DataFormatError
    from rac.retrieval import IndexConfig

    @ray_local.remote
    def load():
        raise DataFormatError("q.jsonl", "line 3", "field 'query' is missing")

    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    assert run(IndexConfig, lambda cfg: ray_local.get(load.remote()), argv=[]) == 1
    err = capfd.readouterr().err
    assert "error: q.jsonl: line 3: field 'query' is missing" in err.splitlines() and "Traceback" not in err


def test_library_errors_survive_pickling():
    """What Ray does to an exception raised in a worker."""
    import pickle

    from rac.data import DataFormatError
    from rac.failures import StageIncompleteError

    for e in (DataFormatError("q.jsonl", "line 3", "bad"), StageIncompleteError("retrieve", 2, 10, "e.jsonl", "x")):
        again = pickle.loads(pickle.dumps(e))
        assert type(again) is type(e) and str(again) == str(e)
