"""The pipeline's manifests: unchanged stages are skipped, changed ones and --from re-run."""

import dataclasses
import json

import pyarrow.parquet as pq
import pytest

from rac.config import ConfigError, parse_config
from rac.pipeline import MANIFEST, PipelineConfig, run_pipeline
from rac.retrieval import read_retrieved


def test_rerun_skips_unchanged_and_reruns_changed_stages(ray_local, tmp_path):
    cfg = parse_config(PipelineConfig, ["--run_dir", str(tmp_path), "--stages", "[index, retrieve]"])
    first = run_pipeline(cfg)
    assert [m["skipped"] for m in first.values()] == [False, False]
    manifest = json.loads((tmp_path / "retrieve" / MANIFEST).read_text())
    assert manifest["rows_in"] == 102 and manifest["rows_out"] == 102
    assert manifest["inputs"]["index"] == first["index"]["fingerprint"] and "data" in manifest["inputs"]
    assert manifest["versions"]["ray"] and manifest["git_revision"]

    again = run_pipeline(cfg)
    assert [m["skipped"] for m in again.values()] == [True, True]

    changed = dataclasses.replace(cfg, retriever=dataclasses.replace(cfg.retriever, top_k=2))
    third = run_pipeline(changed)  # top_k changes the index config too (same section): both re-run
    assert not third["retrieve"]["skipped"]
    assert third["retrieve"]["config_hash"] != first["retrieve"]["config_hash"]
    # A changed stage starts clean: every row searched again, none kept from top_k=5.
    assert third["retrieve"]["summary"]["searched"] == 102
    assert max(len(r["passages"] or []) for r in read_retrieved(tmp_path / "retrieve").to_pylist()) == 2

    # Killed midway (no manifest, some parts written): the same stage resumes from its parts.
    (tmp_path / "retrieve" / MANIFEST).unlink()
    parts = sorted((tmp_path / "retrieve" / "retrieved").glob("part-*.parquet"))
    for p in parts[1:]:
        p.unlink()
    resumed = run_pipeline(changed)
    assert resumed["index"]["skipped"] and not resumed["retrieve"]["skipped"]
    kept = pq.read_metadata(parts[0]).num_rows
    assert (resumed["retrieve"]["summary"]["skipped"], resumed["retrieve"]["summary"]["searched"]) == \
        (kept, 102 - kept)

    forced = run_pipeline(changed, start_from="retrieve")  # --from restarts the stage clean
    assert forced["index"]["skipped"] and not forced["retrieve"]["skipped"]
    assert forced["retrieve"]["summary"]["searched"] == 102


def test_unknown_stage_and_from_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown stage"):
        parse_config(PipelineConfig, ["--stages", "[index, train]"])
    cfg = parse_config(PipelineConfig, ["--run_dir", str(tmp_path), "--stages", "[index]"])
    with pytest.raises(ConfigError, match="--from retrieve: not one of the configured stages"):
        run_pipeline(cfg, start_from="retrieve")


@pytest.mark.parametrize("key", ["sft.output_dir", "sft.run_name", "rac.model.path", "negatives.input_dir",
                                 "evaluate.output_dir"])
def test_keys_the_pipeline_sets_are_refused_in_stage_sections(key):
    with pytest.raises(ConfigError, match=f"{key.replace('.', '[.]')} is set by the pipeline"):
        parse_config(PipelineConfig, [f"--{key}", "elsewhere"])
    parse_config(PipelineConfig, ["--sft.learning_rate", "0.001"])  # any other key of a section is taken
