"""The study runner: a two-variant study end to end, shared stages once, resume after an
interruption, test rows only after selection, and config errors.

Retrieval, mixture decoding and evaluation run for real (tiny models, local Ray). The
training stages are replaced by a stand-in that reads the rows the real stage would train on
and writes a fresh tiny model: real Ray Train fits (about 25 s each here, five per study) are
covered by tests/training and by `python -m jobs.experiment` itself, and would not fit the
suite's time budget.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rac.config import ConfigError, parse_config, to_dict
from rac.experiment import ExperimentConfig, read_events, run_study
from rac.experiment.study import EVENTS
from rac.failures import StageResult
from rac.pipeline import MANIFEST
from rac.testing.tiny import save_tiny_model
from tests.conftest import REPO


class Interrupted(Exception):
    """Stands for a study killed midway."""


class FakeTraining:
    """``run_sft``/``run_rac`` stand-in: records the rows it was given, writes a tiny model."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls: list[tuple[str, list[str]]] = []
        self.configs: dict[str, object] = {}
        self.fail_on: str | None = None

    def __call__(self, cfg):
        if self.fail_on and self.fail_on in cfg.output_dir:
            raise Interrupted(cfg.output_dir)
        rows = cfg.read_rows()
        self.calls.append((cfg.output_dir, [r["id"] for r in rows]))
        self.configs[cfg.output_dir] = cfg
        seed = int(hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:6], 16)
        save_tiny_model(Path(cfg.output_dir) / "model", seed=seed, tokenizer=self.tokenizer, weight_std=0.2)
        return StageResult("train", rows_in=len(rows), rows_out=len(rows))


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    from transformers import AutoTokenizer

    base = save_tiny_model(tmp_path / "base")
    fake = FakeTraining(AutoTokenizer.from_pretrained(str(base)))
    # Where the study and its ablation call them (imported at the top), and in rac.training.
    for module in ("rac.experiment.runner", "rac.training"):
        monkeypatch.setattr(f"{module}.run_sft", fake)
        monkeypatch.setattr(f"{module}.run_rac", fake)
    monkeypatch.setattr("rac.experiment.ablation.run_rac", fake)
    fake.base = base
    return fake


def study_config(study_dir: Path, base: Path, *extra: str) -> ExperimentConfig:
    args = ["--study_dir", str(study_dir), "--base_model", str(base), "--prepare_model", "false",
            "--grid", "{alpha: [0.5], pairs.chosen: [gold, sample]}", "--seeds", "[0]", "--retriever.top_k", "3",
            "--negatives.sampling.max_new_tokens", "8", "--negatives.max_prompt_tokens", "168",
            "--negatives.pool", "{min_size: 1, max_size: 1, batch_size: 64}",
            "--evaluate.max_new_tokens", "8", "--evaluate.max_prompt_tokens", "168",
            "--evaluate.pool", "{min_size: 1, max_size: 1, batch_size: 64}",
            "--evaluate.embedding_model", "null", "--evaluate.bootstrap_samples", "100",
            "--validation.fraction", "0.15", *extra]
    return parse_config(ExperimentConfig, args)


def finished(events, stage):
    return [e for e in events if e["stage"] == stage and e["event"] == "finished"]


@pytest.mark.slow
def test_two_variant_study_resumes_shares_stages_and_tests_after_selection(ray_local, fake_training, tmp_path):
    study = tmp_path / "study"
    cfg = study_config(study, fake_training.base)
    variants = [v.name for v in cfg.variants()]
    assert variants == ["rac-a0.5-g0.5-b0.1-sigmoid-gold", "rac-a0.5-g0.5-b0.1-sigmoid-sample"]

    # Killed while training the second variant: what finished keeps its manifest.
    fake_training.fail_on = f"train/{variants[1]}-s0"
    with pytest.raises(Interrupted):
        run_study(cfg)
    done = ["retrieve", "splits", "sft_grounded", "sft_ungrounded", "negatives/a0-s0", "negatives/a0.5-s0",
            f"train/{variants[0]}-s0", "pairs/a0.5-sample-s0"]
    assert all((study / s / MANIFEST).is_file() for s in done)
    assert not (study / "train" / f"{variants[1]}-s0" / MANIFEST).is_file() and not (study / "test").exists()

    fake_training.fail_on = None
    fake_training.calls.clear()
    results = run_study(cfg)
    events = read_events(study)
    # Resumed: nothing that had finished ran again; the rest ran once.
    assert [Path(d).name for d, _ in fake_training.calls] == [f"{variants[1]}-s0", "continued-sft-s0"]
    for stage in done:
        assert len(finished(events, stage)) == 1, stage
        assert events[-1]["time"] > finished(events, stage)[0]["time"]
        assert any(e["stage"] == stage and e["event"] == "skipped" for e in events)
    # The alpha-0.5 negatives were decoded once and serve both variants: as they are (gold C+),
    # and paired with the grounded model's alpha-0 sample of the same row seed (sampled C+).
    manifest = {s: json.loads((study / s / MANIFEST).read_text()) for s in [*done, f"train/{variants[1]}-s0"]}
    negatives = manifest["negatives/a0.5-s0"]["fingerprint"]
    assert manifest[f"train/{variants[0]}-s0"]["inputs"]["negatives/a0.5-s0"] == negatives
    assert manifest["pairs/a0.5-sample-s0"]["inputs"]["negatives/a0.5-s0"] == negatives
    assert manifest[f"train/{variants[1]}-s0"]["inputs"]["pairs/a0.5-sample-s0"] == \
        manifest["pairs/a0.5-sample-s0"]["fingerprint"]
    sample = {r["id"]: r for r in pq.read_table(study / "negatives" / "a0-s0" / "negatives").to_pylist()}
    pairs = pq.read_table(study / "pairs" / "a0.5-sample-s0" / "negatives").to_pylist()
    assert all(r["chosen"] == sample[r["id"]]["rejected"] for r in pairs if r["error"] is None)

    # Test rows: in their own folder, read by the test evaluation only, after the selection.
    carved = [*pq.read_table(study / "splits" / "select" / "retrieved").to_pylist(),
              *pq.read_table(study / "splits" / "test" / "retrieved").to_pylist()]
    topics = {split: {r["topic_id"] for r in carved if r["split"] == split} for split in ("t1", "t2", "val", "test")}
    assert all(topics.values()) and sum(map(len, topics.values())) == len(set().union(*topics.values()))
    retrieved = pq.read_table(study / "retrieve" / "retrieved").to_pylist()
    assert sorted(r["id"] for r in carved if r["split"] == "test") == \
        sorted(r["id"] for r in retrieved if r["split"] == "test")  # test: every row, untouched
    assert {r["split"] for r in pq.read_table(study / "splits" / "select" / "retrieved").to_pylist()} == \
        {"t1", "t2", "val"}
    order = [(e["stage"], e["event"]) for e in events]
    test_started = [e for e in events if e["stage"] == "test" and e["event"] == "started"]
    assert len(test_started) == 1 and order.index(("test", "started")) > order.index(("selection", "finished"))
    selection = json.loads((study / "selection" / "selection.json").read_text())
    assert selection["selected_at"] < test_started[0]["time"]
    assert min(p.stat().st_mtime for p in (study / "test" / "predictions").glob("*.parquet")) > \
        (study / "selection" / "selection.json").stat().st_mtime
    test_rows = set(pq.read_table(study / "splits" / "test" / "retrieved").column("id").to_pylist())
    val = pq.read_table(study / "validation" / "predictions" / "grounded-sft.parquet").to_pylist()
    assert {r["split"] for r in val} == {"val"} and not test_rows & {r["id"] for r in val}
    trained_on = {i for _, ids in fake_training.calls for i in ids}
    assert not trained_on & test_rows and not trained_on & {r["id"] for r in val}

    # What the study wrote: every system of the table, with its intervals and significance.
    assert results["selected"] in variants and results["selected"] == selection["selected"]
    assert results["test_evaluations"] == 1
    assert set(results["systems"]) == {"grounded-sft", "ungrounded-sft", "continued-sft", "rac"}
    parent = results["systems"]["rac"]["metrics"]["parent_f1"]
    assert parent["per_seed"] and parent["ci95_seeds"] is None and len(parent["ci95_rows"]) == 2
    assert "rac vs grounded-sft" in results["significance"] and "rac vs continued-sft" in results["significance"]
    assert results["significance"]["rac vs grounded-sft"]["parent_f1"]["n"] == results["test_rows"]
    assert {row["system"] for row in selection["table"]} == {"grounded-sft", "ungrounded-sft", "continued-sft",
                                                            *variants}
    assert set(results["diagnosis"]["validity_t2"]) == {"gold", "sample"}
    assert results["diagnosis"]["gold_passage_retrieved"]["test"]["rows"] == results["test_rows"]
    md = (study / "results.md").read_text()
    assert "## Validation table" in md and "Metric validity on T2" in md and "rac vs continued-sft" in md
    for name in ("faithfulness_vs_rouge", "faithfulness_vs_alpha", "question_length"):
        assert Path(results["plots"][name]).stat().st_size > 0

    # Run again: every stage skipped.
    before = len(read_events(study))
    run_study(cfg)
    assert all(e["event"] == "skipped" for e in read_events(study)[before:])
    assert (study / EVENTS).is_file()


@pytest.mark.slow
def test_grounded_pairs_study_over_two_seeds_reports_pairs_seeds_and_the_gaming_check(ray_local, fake_training,
                                                                                      tmp_path):
    study = tmp_path / "study"
    cfg = study_config(study, fake_training.base, "--grid", "{alpha: [0.5], pairs.chosen: [best_of_n], "
                       "pairs.min_margin: [null, 0.0]}", "--pairs.n", "2", "--pairs.score", "parent_f1",
                       "--seeds", "[0, 1]", "--sft_per_seed", "[grounded]")
    results = run_study(cfg)
    manifests = {s: json.loads((study / s / MANIFEST).read_text()) for s in
                 ("pairs/a0.5-best2-pf1-s1", "pairs/a0.5-best2-pf1-m0-s1", "sft_grounded-s1", "sft_ungrounded")}
    margin = manifests["pairs/a0.5-best2-pf1-m0-s1"]["result"]["details"]
    assert margin["kept"] + margin["dropped_by_margin"] + margin["without_candidate"] == margin["with_negative"]
    assert manifests["pairs/a0.5-best2-pf1-s1"]["result"]["details"]["dropped_by_margin"] == 0
    # Seeds: every baseline the bar compares against has one run per seed, and an interval over them.
    assert results["systems"]["grounded-sft"]["runs"] == ["grounded-sft-s0", "grounded-sft-s1"]
    assert results["systems"]["ungrounded-sft"]["runs"] == ["ungrounded-sft"]
    assert len(results["systems"]["grounded-sft"]["metrics"]["parent_f1"]["ci95_seeds"]) == 2
    assert results["significance"]["rac vs grounded-sft"]["parent_f1"]["seeds"] == 2
    assert {e["pairs"] for e in results["pairs"]} == {"best2-pf1", "best2-pf1-m0"}
    entry = next(e for e in results["pairs"] if e["pairs"] == "best2-pf1-m0")
    assert entry["seeds"] == 2 and entry["validity"]["parent_f1"]["built_with"]
    assert not entry["validity"]["parent_precision"]["built_with"]
    assert results["metric_gaming"]["build_score"] == "parent_f1"
    assert results["metric_gaming"]["check_score"] == "semantic_support"
    md = (study / "results.md").read_text()
    assert "## Pairs" in md and "dropped: margin" in md and "## Metric gaming check" in md and "not used" in md
    assert set(results["diagnosis"]["validity_t2"]) == {"best2-pf1", "best2-pf1-m0"}

    # The chosen-SFT ablation: per seed, gamma 0 on the very pairs the selected setting trained on,
    # evaluated on validation and test and tested against the selected setting, seeds pooled.
    from rac.experiment.ablation import run_chosen_sft_ablation

    fake_training.calls.clear()
    out = run_chosen_sft_ablation(cfg)
    rows = {Path(d).name: ids for d, ids in fake_training.calls}
    assert sorted(rows) == ["chosen-sft-s0", "chosen-sft-s1"]
    for seed in (0, 1):
        ablation = fake_training.configs[str(study / "ablation" / "train" / f"chosen-sft-s{seed}")]
        rac = fake_training.configs[str(study / "train" / f"{results['selected']}-s{seed}")]
        assert ablation.gamma == 0.0 and rac.gamma == 0.5 and ablation.input_dir == rac.input_dir
        assert ablation.model.path == rac.model.path and ablation.seed == seed
        assert sorted(rows[f"chosen-sft-s{seed}"]) == sorted(r["id"] for r in rac.read_rows())
    test = out["splits"]["test"]
    assert test["chosen-sft"]["runs"] == ["chosen-sft-s0", "chosen-sft-s1"]
    assert test["significance"]["rac vs chosen-sft"]["parent_f1"]["seeds"] == 2
    assert test["significance"]["chosen-sft vs grounded-sft"]["parent_f1"]["n"] == results["test_rows"]
    assert set(out["splits"]) == {"val", "test"}
    assert json.loads((study / "ablation" / "results.json").read_text())["selected"] == results["selected"]
    before = len(read_events(study))
    run_chosen_sft_ablation(cfg)
    assert all(e["event"] == "skipped" for e in read_events(study)[before:])


def test_selection_keeps_rouge_within_the_tolerance_of_grounded_sft(tmp_path):
    from rac.experiment.config import SelectionConfig
    from rac.experiment.runner import SelectConfig, select_setting

    def system(rouge, parent):
        return {"rows": 10, "evaluated": 10, "rouge_l": rouge, "parent_f1": parent, "meteor": "not available"}

    report = {"systems": {"grounded-sft": system(0.30, 0.20), "ungrounded-sft": system(0.25, 0.10),
                          "continued-sft-s0": system(0.31, 0.21), "continued-sft-s1": system(0.29, 0.19),
                          "a-s0": system(0.20, 0.60), "a-s1": system(0.22, 0.60),  # most faithful, ROUGE-L too low
                          "b-s0": system(0.295, 0.30), "b-s1": system(0.293, 0.26),
                          "c-s0": system(0.35, 0.22), "c-s1": system(0.35, 0.22)}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    cfg = SelectConfig(str(tmp_path / "report.json"), str(tmp_path / "sel"), ["a", "b", "c"], [0, 1],
                       SelectionConfig())
    assert select_setting(cfg).details["selected"] == "b"
    table = {r["system"]: r for r in json.loads((tmp_path / "sel" / "selection.json").read_text())["table"]}
    assert table["b"]["parent_f1"] == pytest.approx(0.28) and table["continued-sft"]["seeds"] == 2
    assert [table[v]["qualifies"] for v in "abc"] == [False, True, True]
    strict = SelectConfig(cfg.report, cfg.output_dir, ["a"], [0, 1], SelectionConfig(guard_tolerance=0.0))
    assert select_setting(strict) == StageResult("selection", rows_in=1, rows_out=1,
                                                 details={"selected": "a", "met_guard": False})


@pytest.mark.parametrize(("grid", "message"), [
    ("{}", "the grid is empty"),
    ("{alpha: [], gamma: [0.5]}", "the grid is empty"),
    ("{alpha: [0.5], temperature: [0.7]}", "unknown variant key 'grid.temperature'"),
    ("{gama: [0.5]}", "Did you mean 'gamma'"),
    ("{pairs.chosen: [silver]}", "pairs.chosen must be one of"),
    ("{pairs: {chosen: [best_of_n]}, pairs.n: [1]}", "pairs.n must be >= 2 for best_of_n"),
    ("{chosen_source: [gold]}", "grid.chosen_source is now grid.pairs.chosen"),
    ("{pairs.min_margin: [fast]}", "pairs.min_margin must be a number"),
    ("{pairs.score: [bleu]}", "pairs.score must be one of"),
    ("{gamma: [1.5]}", "gamma must be in"),
])
def test_bad_grids_are_config_errors(grid, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(ExperimentConfig, ["--grid", grid])


@pytest.mark.parametrize("key", ["rac.seed", "sft.output_dir", "negatives.seed", "evaluate.splits"])
def test_keys_the_runner_sets_are_refused(key):
    with pytest.raises(ConfigError, match=f"{key.replace('.', '[.]')} is set by the study runner"):
        parse_config(ExperimentConfig, [f"--{key}", "[val]" if key == "evaluate.splits" else "7"])


def test_door_exits_2_on_an_empty_grid(tmp_path, capsys):
    from jobs._door import run

    argv = ["--config", str(REPO / "configs/experiments/demo.yaml"), "--grid", "{}", "--study_dir",
            str(tmp_path / "study")]
    code = run(ExperimentConfig, run_study, argv=argv, use_ray=False)
    assert code == 2 and "config error: the grid is empty" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("name", ["demo", "qulac", "qulac-pairs"])
def test_checked_in_study_configs_parse(name):
    cfg = parse_config(ExperimentConfig, ["--config", str(REPO / "configs" / "experiments" / f"{name}.yaml")])
    assert cfg.evaluate.max_prompt_tokens + cfg.evaluate.max_new_tokens <= cfg.rac.max_length
    if name != "qulac-pairs":
        assert {v.pairs.chosen for v in cfg.variants()} == {"gold", "sample"}
        assert [v.name for v in cfg.variants()][0] == "rac-a0.5-g0.5-b0.1-sigmoid-gold"  # the names of before
        return
    # The grid, trimmed as its header says: best of 4 at alpha 0.5, with and without the margin.
    assert cfg.seeds == [0, 1, 2] and cfg.sft_per_seed == ["grounded"]
    points = [(v.alpha, v.pairs.chosen, v.pairs.n, v.pairs.min_margin) for v in cfg.variants()]
    assert points == [(0.5, "best_of_n", 4, None), (0.5, "best_of_n", 4, 0.05)]
    assert {v.pairs.build_score for v in cfg.variants()} == {"semantic_support"}


def test_a_list_of_grids_is_the_union_of_their_products():
    cfg = parse_config(ExperimentConfig, ["--grid", "[{alpha: [0.5, 0.8]}, {alpha: [0.5], gamma: [0.5, 1.0]}]"])
    assert [(v.alpha, v.gamma) for v in cfg.variants()] == [(0.5, 0.5), (0.8, 0.5), (0.5, 1.0)]
    with pytest.raises(ConfigError, match="grid must be a mapping"):
        parse_config(ExperimentConfig, ["--grid", "[[0.5]]"])


def test_the_study_door_resolves_paths_and_still_wires_the_index(tmp_path):
    """What `python -m jobs.experiment` does before any work: every path under the storage root,
    then the pipeline's own stages wired into study_dir (the resolved default index_dir is not
    taken for a value the user gave)."""
    from rac.storage import prepare_storage

    cfg = parse_config(ExperimentConfig, ["--config", "configs/experiments/qulac-pairs.yaml"])
    prepare_storage(cfg, str(tmp_path))
    pipeline = cfg.pipeline_config()
    assert pipeline.run_dir == str(tmp_path / "outputs/experiments/qulac-pairs")
    assert pipeline.stage_configs()["retrieve"].retriever.index_dir == \
        str(tmp_path / "outputs/experiments/qulac-pairs/index/bm25")


def test_the_ablation_asks_for_the_finished_study_first(tmp_path):
    from rac.experiment.ablation import run_chosen_sft_ablation

    cfg = study_config(tmp_path / "study", tmp_path / "base")
    with pytest.raises(FileNotFoundError, match=r"selection has no manifest: finish the study first"):
        run_chosen_sft_ablation(cfg)
