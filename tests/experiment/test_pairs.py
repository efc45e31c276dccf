"""Pair construction: best-of-n, the margin and gold filters, what the stage reports, the metric-gaming
check, and seeds that change decoding and training but not the splits.

The pairs stage runs for real on negatives written here, scored with PARENT-G (lexical, so no model
and no Ray): every figure below can be recomputed by hand from the texts.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rac.config import parse_config
from rac.decoding.stage import NEGATIVES_DIR, NEGATIVES_SCHEMA
from rac.evaluation.config import EvaluateConfig
from rac.evaluation.grounding import parent_grounding
from rac.experiment import ExperimentConfig
from rac.experiment.config import PairsConfig, Variant
from rac.experiment.pairs import DROPPED, PairsStageConfig, build_pairs, pick_best, scoring_config
from rac.parts import write_part

PASSAGE = "the jaguar car is a british luxury car with a v8 engine and leather seats"
#: Per row: the gold question, the mixture negative C-, and three alpha-0 samples (candidates for C+).
ROWS = {
    "r1": ("jaguar car?", "do you want a cheap holiday?",
           ["are you looking for a cheap holiday?", "is this about the jaguar luxury car engine?",
            "do you mean the jaguar car?"]),
    "r2": ("which jaguar model?", "are you asking about the jaguar car engine?",
           ["are you asking about the british car?", "what about the football team?", "which colour?"]),
    "r3": ("the v8 engine?", "what is a jaguar?",
           ["do you mean leather seats?", "do you mean leather seats?", "do you mean the v8 engine seats?"]),
    "r4": ("is it about the animal?", "is it about the jaguar animal?",
           ["do you mean luxury british car seats?", "a jaguar?", "what?"]),
}


def f1(text: str) -> float:
    return parent_grounding(text, [PASSAGE])["f1"]


def write_negatives(folder: Path, texts: dict[str, str], gold: bool = True, errors: dict[str, str] | None = None,
                    alpha: float = 0.5) -> str:
    rows = [{"id": i, "query": "jaguar", "passages": [{"id": "p1", "text": PASSAGE, "score": 1.0}],
             "chosen": ROWS[i][0] if gold else None, "rejected": t, "alpha": alpha, "seed": 0,
             "error": (errors or {}).get(i)} for i, t in texts.items()]
    (folder / NEGATIVES_DIR).mkdir(parents=True)
    write_part(folder / NEGATIVES_DIR, "part-00000.parquet", pa.Table.from_pylist(rows, schema=NEGATIVES_SCHEMA))
    return str(folder)


@pytest.fixture
def runs(tmp_path):
    """The C- run at alpha 0.5 and three alpha-0 runs (k = 0, 1, 2); r4's C- failed to decode."""
    negatives = write_negatives(tmp_path / "neg", {i: r[1] for i, r in ROWS.items()}, errors={"r4": "generation "
                                                                                              "failed: boom"})
    candidates = [write_negatives(tmp_path / f"a0-k{k}", {i: r[2][k] for i, r in ROWS.items()}, gold=False,
                                  alpha=0.0) for k in range(3)]
    return negatives, candidates, tmp_path


def run_pairs(runs, **settings) -> tuple[dict, dict[str, dict]]:
    negatives, candidates, root = runs
    pairs = PairsConfig(**{"score": "parent_f1", **settings}).effective()
    count = {"gold": 0, "sample": 1, "best_of_n": pairs.n}[pairs.chosen]
    out = root / "pairs" / pairs.tag
    scoring = scoring_config(EvaluateConfig(embedding_model=None), negatives, 0.5, str(out))
    result = build_pairs(PairsStageConfig(negatives, candidates[:count], str(out), pairs, scoring))
    rows = {r["id"]: r for r in pq.read_table(out / NEGATIVES_DIR).to_pylist()}
    assert set(rows) == set(ROWS)  # every row once, kept or with the reason it was not
    return result.details | {"rows_out": result.rows_out}, rows


def test_best_of_n_picks_the_highest_scoring_sample(runs):
    details, rows = run_pairs(runs, chosen="best_of_n", n=3)
    for i in ("r1", "r2", "r3"):
        scores = [f1(c) for c in ROWS[i][2]]
        assert rows[i]["chosen"] == ROWS[i][2][scores.index(max(scores))], i
        assert rows[i]["rejected"] == ROWS[i][1] and rows[i]["error"] is None
    assert rows["r1"]["chosen"] == "is this about the jaguar luxury car engine?"  # not the first sample
    assert rows["r4"]["error"] == "generation failed: boom"  # a row without C- stays as it was
    assert details["picked"] == {"0": 1, "1": 1, "2": 1}  # r2's first sample, r1's second, r3's third
    assert details["score"] == "parent_f1" and details["kept"] == details["rows_out"] == 3
    # C+ is the most grounded by construction, so PARENT-G F1 (used) always wins on the pairs kept.
    assert details["validity"]["parent_f1"]["built_with"] is True
    assert not details["validity"]["parent_precision"]["built_with"]
    # n = 1 of the same runs is the 'sample' source: the first sample, whatever it scores.
    _, sampled = run_pairs(runs, chosen="sample")
    assert sampled["r1"]["chosen"] == ROWS["r1"][2][0]


def test_ties_go_to_the_earliest_sample():
    assert pick_best(["a", "b", "c"], [0.2, 0.5, 0.5]) == 1
    assert pick_best(["a"], [0.0]) == 0


def test_margin_filter_keeps_exactly_the_pairs_over_the_margin_and_counts_the_rest(runs):
    margin = 0.1
    details, rows = run_pairs(runs, chosen="sample", min_margin=margin)
    diffs = {i: f1(ROWS[i][2][0]) - f1(ROWS[i][1]) for i in ("r1", "r2", "r3")}
    expected = {i for i, d in diffs.items() if d >= margin}
    assert expected and expected != set(diffs)  # the case has pairs on both sides of the margin
    assert {i for i, r in rows.items() if r["error"] is None} == expected
    dropped = [r for i, r in rows.items() if i in diffs and i not in expected]
    assert all(r["error"].startswith(f"{DROPPED}min_margin") for r in dropped)
    assert details["dropped_by_margin"] == len(dropped) == 3 - len(expected)
    assert details["kept"] == len(expected) and details["with_negative"] == 3
    assert details["validity_all"]["parent_f1"]["n"] == 3 and details["validity"]["parent_f1"]["n"] == len(expected)
    # On the pairs kept, C+ beats C- on the build score every time.
    assert details["validity"]["parent_f1"]["pairwise_accuracy"] == 1.0


def test_gold_filter_keeps_gold_questions_that_use_their_passages_words(runs):
    recall = {i: parent_grounding(ROWS[i][0], [PASSAGE])["recall"] for i in ("r1", "r2", "r3")}
    threshold = sorted(recall.values())[1]
    details, rows = run_pairs(runs, chosen="gold", gold_min_recall=threshold)
    assert {i for i, r in rows.items() if r["error"] is None} == {i for i, v in recall.items() if v >= threshold}
    assert details["dropped_by_gold_recall"] == sum(v < threshold for v in recall.values()) == 1
    assert all(r["chosen"] == ROWS[i][0] for i, r in rows.items())


def test_pair_settings_name_the_variant_and_settings_that_change_nothing_are_one_variant():
    cfg = parse_config(ExperimentConfig, [
        "--grid", "{alpha: [0.5], pairs.chosen: [gold, sample, best_of_n], pairs.min_margin: [null, 0.05]}",
        "--pairs.n", "4", "--pairs.gold_min_recall", "0.1"])
    names = [v.name.removeprefix("rac-a0.5-g0.5-b0.1-sigmoid-") for v in cfg.variants()]
    assert names == ["gold-r0.1", "gold-sem-m0.05-r0.1", "sample", "sample-sem-m0.05", "best4-sem",
                     "best4-sem-m0.05"]
    # n means nothing without best_of_n: one variant, not two.
    cfg = parse_config(ExperimentConfig, ["--grid", "{pairs.chosen: [sample], pairs.n: [2, 4]}"])
    assert len(cfg.variants()) == 1 and cfg.variants()[0].pairs.build_score is None


def test_semantic_support_pairs_need_the_embedding_model():
    with pytest.raises(Exception, match="pairs.score semantic_support .* needs evaluate.embedding_model"):
        parse_config(ExperimentConfig, ["--grid", "{pairs.chosen: [best_of_n]}", "--evaluate.embedding_model",
                                        "null"])


def test_metric_gaming_is_named_when_only_the_build_score_gains():
    from rac.experiment.results import metric_gaming

    def test(diff, p):
        return {"mean_diff": diff, "bootstrap": {"p_value": p}}

    variant = Variant(0.5, 0.5, 0.1, "sigmoid", PairsConfig(chosen="best_of_n", score="semantic_support"))
    significance = {"rac vs grounded-sft": {"semantic_support": test(0.03, 0.001), "parent_f1": test(0.001, 0.6)},
                    "rac vs continued-sft": {"semantic_support": test(0.02, 0.01), "parent_f1": test(0.02, 0.01)},
                    "continued-sft vs grounded-sft": {}}
    check = metric_gaming(variant, significance)
    assert check["build_score"] == "semantic_support" and check["check_score"] == "parent_f1"
    assert check["comparisons"]["rac vs grounded-sft"]["verdict"].startswith("metric gaming")
    assert check["comparisons"]["rac vs continued-sft"]["verdict"] == "a gain on both scores"
    assert check["gaming"] and set(check["comparisons"]) == {"rac vs grounded-sft", "rac vs continued-sft"}
    unscored = Variant(0.5, 0.5, 0.1, "sigmoid", PairsConfig(chosen="sample"))
    assert metric_gaming(unscored, significance)["build_score"] is None


def test_seeds_change_decoding_and_training_but_not_the_splits(monkeypatch, tmp_path):
    """Plan a two-seed study with per-seed grounded SFT (stages recorded, not run)."""
    from rac.experiment import runner

    cfg = parse_config(ExperimentConfig, ["--study_dir", str(tmp_path), "--prepare_model", "false",
                                          "--seeds", "[0, 1]", "--sft_per_seed", "[grounded]",
                                          "--grid", "{alpha: [0.5], pairs.chosen: [best_of_n]}", "--pairs.n", "2"])
    planned: dict[str, object] = {}

    def stage(self, name, stage_cfg, fn, upstream, external=None):
        assert all(u in planned or u == "retrieve" for u in upstream), (name, upstream)
        planned[name] = stage_cfg
        return {"fingerprint": name, "skipped": False}

    monkeypatch.setattr(runner, "run_pipeline", lambda pipe: {"retrieve": {"fingerprint": "r", "skipped": True}})
    monkeypatch.setattr(runner.Study, "stage", stage)
    study = runner.Study(cfg)
    study.shared_stages()
    study.t2_stages()

    assert [n for n in planned if n.startswith("splits")] == ["splits"]  # one split for every seed
    assert planned["splits"].validation.seed == cfg.validation.seed
    assert {n for n in planned if n.startswith("sft_")} == {"sft_grounded-s0", "sft_grounded-s1", "sft_ungrounded"}
    assert [planned[f"sft_grounded-s{s}"].seed for s in (0, 1)] == [0, 1]
    negatives = {s: planned[f"negatives/a0.5-s{s}"] for s in (0, 1)}
    assert negatives[0].seed != negatives[1].seed
    assert negatives[1].grounded_model.endswith("sft_grounded-s1/model")
    # best of 2: the k = 1 samples of each seed are decoded with their own seed, apart from both study seeds.
    k1 = [planned[f"negatives/a0-s{s}-k1"].seed for s in (0, 1)]
    assert planned["negatives/a0-s0"].seed == 0 and len({*k1, 0, 1}) == 4
    variant = study.variants[0]
    rac = {s: planned[f"train/{variant.name}-s{s}"] for s in (0, 1)}
    assert [rac[s].seed for s in (0, 1)] == [0, 1]
    assert rac[1].model.path.endswith("sft_grounded-s1/model") and rac[1].input_dir.endswith("best2-sem-s1")
    assert [planned[f"train/continued-sft-s{s}"].seed for s in (0, 1)] == [0, 1]
    assert planned["pairs/a0.5-best2-sem-s1"].candidate_dirs[1].endswith("negatives/a0-s1-k1")
    systems, _ = study.systems(study.variants)
    assert {s.name for s in systems} >= {"grounded-sft-s0", "grounded-sft-s1", "ungrounded-sft"}
