"""The pipeline's manifests: unchanged stages are skipped, changed ones and --from re-run."""

import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from rac.config import ConfigError, parse_config
from rac.data import load_data
from rac.failures import StageIncompleteError, StageResult
from rac.pipeline import MANIFEST, STARTED, PipelineConfig, run_pipeline, runners
from rac.retrieval import read_retrieved


def test_rerun_skips_unchanged_and_reruns_changed_stages(ray_local, tmp_path):
    cfg = parse_config(PipelineConfig, ["--run_dir", str(tmp_path), "--stages", "[index, retrieve]"])
    first = run_pipeline(cfg)
    assert [m["skipped"] for m in first.values()] == [False, False]
    manifest = json.loads((tmp_path / "retrieve" / MANIFEST).read_text())
    assert manifest["result"]["rows_in"] == 102 and manifest["result"]["rows_out"] == 102
    assert manifest["inputs"]["index"] == first["index"]["fingerprint"] and "data" in manifest["inputs"]
    assert manifest["versions"]["ray"] and manifest["git_revision"]

    again = run_pipeline(cfg)
    assert [m["skipped"] for m in again.values()] == [True, True]

    changed = dataclasses.replace(cfg, retriever=dataclasses.replace(cfg.retriever, top_k=2))
    third = run_pipeline(changed)  # top_k changes the index config too (same section): both re-run
    assert not third["retrieve"]["skipped"]
    assert third["retrieve"]["config_hash"] != first["retrieve"]["config_hash"]
    # A changed stage starts clean: every row searched again, none kept from top_k=5.
    assert third["retrieve"]["result"]["details"]["searched"] == 102
    assert max(len(r["passages"] or []) for r in read_retrieved(tmp_path / "retrieve").to_pylist()) == 2

    # Killed midway (no manifest, some parts written): the same stage resumes from its parts.
    (tmp_path / "retrieve" / MANIFEST).unlink()
    parts = sorted((tmp_path / "retrieve" / "retrieved").glob("part-*.parquet"))
    for p in parts[1:]:
        p.unlink()
    resumed = run_pipeline(changed)
    assert resumed["index"]["skipped"] and not resumed["retrieve"]["skipped"]
    kept = pq.read_metadata(parts[0]).num_rows
    d = resumed["retrieve"]["result"]["details"]
    assert (d["skipped"], d["searched"]) == (kept, 102 - kept)

    forced = run_pipeline(changed, start_from="retrieve")  # --from restarts the stage clean
    assert forced["index"]["skipped"] and not forced["retrieve"]["skipped"]
    assert forced["retrieve"]["result"]["details"]["searched"] == 102


def test_unknown_stage_and_from_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown stage"):
        parse_config(PipelineConfig, ["--stages", "[index, train]"])
    cfg = parse_config(PipelineConfig, ["--run_dir", str(tmp_path), "--stages", "[index]"])
    with pytest.raises(ConfigError, match="--from retrieve: not one of the configured stages"):
        run_pipeline(cfg, start_from="retrieve")


@pytest.mark.parametrize("key", ["sft.output_dir", "sft.run_name", "rac.model.path", "negatives.input_dir",
                                 "evaluate.output_dir", "detector.output_dir", "evaluate.detector"])
def test_keys_the_pipeline_sets_are_refused_in_stage_sections(key):
    with pytest.raises(ConfigError, match=f"{key.replace('.', '[.]')} is set by the pipeline"):
        parse_config(PipelineConfig, [f"--{key}", "elsewhere"])
    parse_config(PipelineConfig, ["--sft.learning_rate", "0.001"])  # any other key of a section is taken


def test_the_detector_stage_is_optional_and_wired_into_evaluate():
    default = parse_config(PipelineConfig, [])
    assert "train_detector" not in default.stages and default.stage_configs()["evaluate"].detector is None
    cfg = parse_config(PipelineConfig, ["--run_dir", "runs/x", "--with_detector", "true"])
    assert cfg.stages.index("train_detector") == cfg.stages.index("negatives") + 1
    stages = cfg.stage_configs()
    assert stages["train_detector"].negatives_dirs == ["runs/x/negatives"]
    assert stages["train_detector"].lm_tokenizer == "runs/x/sft_grounded/model"
    assert stages["evaluate"].detector == "runs/x/train_detector/model"


@pytest.mark.slow
def test_failed_rows_and_files_cut_short_are_never_taken_as_done(ray_local, tmp_path, monkeypatch):
    cfg = parse_config(PipelineConfig, ["--run_dir", str(tmp_path), "--stages", "[index, retrieve]",
                                        "--retrieve_pool.batch_size", "20"])
    run_pipeline(cfg)
    stage_dir = tmp_path / "retrieve"
    parts = sorted((stage_dir / "retrieved").glob("part-*.parquet"))
    assert len(parts) == 6

    # A crash cut the manifest and a part short: the stage runs again and redoes that part's rows.
    manifest = stage_dir / MANIFEST
    manifest.write_text(manifest.read_text()[:40])
    lost = pq.read_metadata(parts[2]).num_rows
    parts[2].write_bytes(parts[2].read_bytes()[:300])
    again = run_pipeline(cfg)
    assert again["index"]["skipped"] and not again["retrieve"]["skipped"]
    d = again["retrieve"]["result"]["details"]
    assert (d["skipped"], d["searched"]) == (102 - lost, lost)
    assert sorted(read_retrieved(stage_dir).column("id").to_pylist()) == sorted(
        r["id"] for r in load_data("demo").records)

    # started.json cut short: the output cannot be matched to a config, so the stage starts clean.
    manifest.unlink()
    (stage_dir / STARTED).write_text("{")
    assert run_pipeline(cfg)["retrieve"]["result"]["details"]["searched"] == 102

    # A stage that ends with failed rows is not finished: no manifest, the run stops naming the
    # stage, the count and the errors file; the next run does the stage again.
    real = runners()

    def retrieve_with_failures(c):
        result = real["retrieve"](c)
        failed = StageResult.with_failures("retrieve", [{"id": "x", "error": "retrieval failed: server gone"}],
                                           tmp_path / "retrieve" / "errors.jsonl")
        return dataclasses.replace(result, failed_rows=failed.failed_rows, errors_file=failed.errors_file,
                                   first_failure=failed.first_failure)

    monkeypatch.setattr("rac.pipeline.runners", lambda: {**real, "retrieve": retrieve_with_failures})
    with pytest.raises(StageIncompleteError, match=r"stage retrieve is incomplete: 1 of 102 rows failed \(first: "
                                                   r"retrieval failed: server gone\)\. They are listed in .*errors"):
        run_pipeline(cfg, start_from="retrieve")
    assert not manifest.exists()
    monkeypatch.setattr("rac.pipeline.runners", lambda: real)
    resumed = run_pipeline(cfg)
    assert not resumed["retrieve"]["skipped"] and manifest.is_file()

    # A part of the finished stage cut short later: the stage is not skipped, its rows are redone.
    part = sorted((stage_dir / "retrieved").glob("part-*.parquet"))[0]
    lost = pq.read_metadata(part).num_rows
    part.write_bytes(part.read_bytes()[:100])
    redone = run_pipeline(cfg)
    assert redone["index"]["skipped"] and not redone["retrieve"]["skipped"]
    assert redone["retrieve"]["result"]["details"]["searched"] == lost
    assert run_pipeline(cfg)["retrieve"]["skipped"]


def test_the_printed_summary_shows_detector_support_only_when_a_detector_ran(tmp_path):
    from rac.pipeline import summary_text

    cfg = PipelineConfig(run_dir=str(tmp_path))
    (tmp_path / "evaluate").mkdir()
    report = {"examples": [], "metric_status": {}, "detector": None,
              "systems": {"grounded-sft": {"rouge_l": 0.26}, "rac": {"rouge_l": 0.28}}}
    (tmp_path / "evaluate" / "report.json").write_text(json.dumps(report))
    manifests = {"evaluate": {"seconds": 1.0, "result": StageResult("evaluate", rows_in=12).to_dict()}}
    assert "detector support" not in summary_text(cfg, manifests)
    report["detector"] = {"systems": {"grounded-sft": {"evaluated": 12, "detector_support": 0.7521},
                                      "rac": {"evaluated": 12, "detector_support": 0.7421}}}
    (tmp_path / "evaluate" / "report.json").write_text(json.dumps(report))
    line = next(x for x in summary_text(cfg, manifests).splitlines() if "detector support" in x)
    assert "grounded-sft 0.7521" in line and "rac 0.7421" in line and "favours a model trained against them" in line


def test_a_mistyped_base_model_stops_the_run_before_any_work(tmp_path):
    """Only the packaged default's directory is prepared for you: any other base_model without a
    model is refused before the first stage, and no model is written under its name."""
    from rac.models.factory import ModelDirError
    from rac.models.prepare import check_base_model

    typo = tmp_path / "models" / "Llama-3.1-8B-Instuct"
    cfg = parse_config(PipelineConfig, ["--run_dir", str(tmp_path / "run"), "--base_model", str(typo)])
    with pytest.raises(ModelDirError, match=rf"^base_model {typo} is not a Hugging Face model directory \(no "
                                            r"config.json\), and a run writes no model there: only the packaged "
                                            r"default \(outputs/models/smollm2-135m-instruct\) is prepared"):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists() and not typo.exists()
    check_base_model(tmp_path / "elsewhere" / "smollm2-135m-instruct", None, prepares=True)  # the packaged default
    with pytest.raises(ModelDirError):  # ... but only where prepare_model runs
        check_base_model(tmp_path / "elsewhere" / "smollm2-135m-instruct", None, prepares=False)
    gguf = tmp_path / "my.gguf"
    with pytest.raises(ConfigError, match=rf"^base_model_gguf {gguf} does not exist"):
        check_base_model(typo, gguf, prepares=True)
    gguf.write_bytes(b"GGUF")
    check_base_model(typo, gguf, prepares=True)
    (typo / "config.json").parent.mkdir(parents=True)
    (typo / "config.json").write_text("{}")
    check_base_model(typo, None, prepares=False)  # a model of your own
