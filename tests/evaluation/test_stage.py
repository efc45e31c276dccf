"""The evaluation stage: generation keeps every row (real local Ray), scores, report, not-configured paths."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sacrebleu
import yaml

from jobs._door import run
from jobs.evaluate import main as evaluate_job
from rac.config import ActorPoolConfig
from rac.data.schema import PASSAGE_TYPE, records_to_table
from rac.evaluation import EvaluateConfig, SystemConfig, run_evaluate
from rac.evaluation.grounding import metric_words
from rac.evaluation.reference import NOT_AVAILABLE_OFFLINE, wordnet_available
from rac.evaluation.scorers import NOT_AVAILABLE, NOT_CONFIGURED, EntailmentScorer
from rac.evaluation.stage import GenerateBatch, clean_question
from rac.models.generation import GENERATION_FAILURE
from rac.testing.tiny import demo_texts, save_tiny_encoder

#: Hand-made T2 rows: (id, passage, C+). C- at each alpha is built to be less grounded as alpha grows.
T2 = [
    ("m1", "The jaguar is a wild cat living in the Amazon rainforest.",
     "are you asking about the jaguar as a wild cat in the amazon?"),
    ("m2", "Python is a programming language created by Guido van Rossum.",
     "do you mean the python programming language?"),
    ("m3", "Mercury is the smallest planet of the solar system.", "are you interested in the planet mercury?"),
    ("m4", "Java is an island of Indonesia with the city of Jakarta.", "do you want to know about the island of java?"),
]
OFF_TOPIC = "purple submarine orchestra tickets"


def _rejected(passage: str, alpha: float) -> str:
    words = [w.strip(".").lower() for w in passage.split()[-4:]]
    keep = round((1 - alpha) * len(words))
    return "are you looking for " + " ".join(words[:keep] + OFF_TOPIC.split()[: len(words) - keep]) + "?"


def _write_negatives(root, alpha: float, with_error: bool = False):
    rows = []
    for i, passage, chosen in T2:
        rejected = _rejected(passage, alpha)
        provenance = [1 if k < round(alpha * 8) else 0 for k in range(8)]
        rows.append({"id": i, "query": i, "passages": [{"id": f"p-{i}", "text": passage, "score": 1.0}],
                     "chosen": chosen, "rejected": rejected, "provenance": provenance,
                     "mixing_rate": None, "alpha": alpha, "error": None,  # realised rate: from provenance
                     "topic_id": i, "rejected_token_ids": None})
    if with_error:
        rows.append({"id": "m5", "query": "x", "passages": [], "chosen": "x?", "rejected": None, "provenance": None,
                     "mixing_rate": None, "alpha": alpha, "error": "generation failed: RuntimeError: boom",
                     "topic_id": "m5", "rejected_token_ids": None})
    schema = pa.schema([("id", pa.string()), ("query", pa.string()), ("passages", pa.list_(PASSAGE_TYPE)),
                        ("chosen", pa.string()), ("rejected", pa.string()), ("provenance", pa.list_(pa.int8())),
                        ("mixing_rate", pa.float64()), ("alpha", pa.float64()), ("error", pa.string()),
                        ("topic_id", pa.string()), ("rejected_token_ids", pa.list_(pa.int32()))])
    out = root / f"neg-{alpha}"
    (out / "negatives").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "negatives" / "part-0.parquet")
    return str(out)


def test_clean_question():
    assert clean_question(" which jaguar? the car? more", True) == "which jaguar?"
    assert clean_question("which jaguar\nnext line?", True) == "which jaguar"
    assert clean_question(" which jaguar? the car?", False) == "which jaguar? the car?"


def _cfg(lm_dirs, tmp_path, **overrides):
    fields = {"input_dir": str(tmp_path / "retrieve"), "output_dir": str(tmp_path / "eval"),
              "systems": [SystemConfig(name="a", path=str(lm_dirs[0]))], "max_new_tokens": 6,
              "max_prompt_tokens": 160, "stop_at_question": False, "embedding_model": None,
              "pool": ActorPoolConfig(min_size=1, max_size=1, batch_size=4)}
    return EvaluateConfig(**{**fields, **overrides})


def test_generation_batches_with_left_padding_and_keeps_failing_rows(lm_dirs, tmp_path, demo_records):
    cfg = _cfg(lm_dirs, tmp_path, max_prompt_tokens=1000)  # no trimming: prompts keep their own lengths
    gen = GenerateBatch(cfg, cfg.systems[0])
    records = [{**r, "split": "test"} for r in demo_records[:3]]
    prompts = [gen._prompt_ids(r)[0] for r in records]
    assert len({len(p) for p in prompts}) == 3  # three lengths: the batch needs padding
    assert gen.generate(prompts) == [gen.generate([p])[0] for p in prompts]

    # One row whose decoding raises fails alone; bad input rows come out with their reason.
    bad_prompt = prompts[1]
    real_generate = gen.generate

    def flaky(batch):
        if bad_prompt in batch:
            raise RuntimeError("out of memory")
        return real_generate(batch)

    gen.generate = flaky
    batch = records_to_table([*records, {**records[0], "id": "no-passages", "passages": None},
                              {**records[0], "id": "bad-input", "error": "retrieval failed: gone"}])
    out = {r["id"]: r for r in gen(batch).to_pylist()}
    assert sorted(out) == sorted([r["id"] for r in records] + ["no-passages", "bad-input"])
    assert out[records[1]["id"]]["error"] == f"{GENERATION_FAILURE}RuntimeError: out of memory"
    assert out[records[0]["id"]]["error"] is None and out[records[0]["id"]]["prediction"] is not None
    assert out[records[2]["id"]]["error"] is None and out[records[2]["id"]]["passages_used"] == 2
    assert out["no-passages"]["error"].startswith("no passages retrieved")
    assert out["bad-input"]["error"] == "input row has an error: retrieval failed: gone"


@pytest.mark.slow
def test_evaluate_job_on_local_ray(ray_local, tmp_path, retrieved_dir, lm_dirs, bert_dir, capsys):
    out = tmp_path / "eval"
    # A tiny exported detector (random head) that was "trained" on topic m1: m2-m4 are its held-out pairs.
    words = sorted(set(metric_words(" ".join([*demo_texts(), *(t for row in T2 for t in row[1:]), OFF_TOPIC]))))
    detector = save_tiny_encoder(tmp_path / "detector", words, num_labels=2,
                                 info={"max_length": 128, "threshold": 0.5, "train_topics": ["m1"],
                                       "negatives_dirs": ["the-run/negatives"]})
    config = {
        "input_dir": str(retrieved_dir), "output_dir": str(out),
        "systems": [{"name": "a", "path": str(lm_dirs[0])},
                    {"name": "b", "path": str(lm_dirs[1]), "prompt": "ungrounded"}],
        "max_new_tokens": 6, "max_prompt_tokens": 160, "nli_model": str(bert_dir), "embedding_model": str(bert_dir),
        "fluency_model": str(lm_dirs[0]), "bootstrap_samples": 200, "num_examples": 2,
        "negatives_dirs": {0.0: _write_negatives(tmp_path, 0.0), 0.5: _write_negatives(tmp_path, 0.5),
                           1.0: _write_negatives(tmp_path, 1.0, with_error=True)},
        "pool": {"min_size": 1, "max_size": 1, "batch_size": 4},
        "score_pool": {"min_size": 1, "max_size": 1, "batch_size": 16},
        "detector": str(detector),
    }
    config_file = tmp_path / "evaluate.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert run(EvaluateConfig, evaluate_job, ["--config", str(config_file)]) == 0
    assert "report:" in capsys.readouterr().out

    # Every test row of the input, and only those, comes out once per system: scored or with its error.
    test_ids = sorted(["bad-error", "bad-passages", *(r["id"] for r in
                                                      pq.read_table(retrieved_dir / "retrieved").to_pylist()
                                                      if r["split"] == "test" and r["id"].startswith("demo"))])
    for name in ("a", "b"):
        rows = {r["id"]: r for r in pq.read_table(out / "predictions" / f"{name}.parquet").to_pylist()}
        assert sorted(rows) == test_ids and len(test_ids) == 8
        assert rows["bad-error"]["error"].startswith("input row has an error")
        assert rows["bad-passages"]["error"].startswith("no passages retrieved")
        good = [r for r in rows.values() if r["error"] is None]
        assert len(good) == 6
        for r in good:
            assert isinstance(r["prediction"], str) and 0 <= r["parent_f1"] <= 1 and 0 <= r["entailment"] <= 1
            assert r["meteor_exact"] is not None and r["rouge_l"] is not None and r["bleu"] is not None
            assert 0 <= r["detector_support"] <= 1 and r["detector_tokens"]
    # The stored entailment is the NLI model's own figure for that question and its passages.
    row = good[0]
    assert row["entailment"] == pytest.approx(EntailmentScorer(bert_dir).score([row["prediction"]],
                                                                               [row["passages"]])[0], abs=1e-5)

    report = json.loads((out / "report.json").read_text())
    for name in ("a", "b"):
        s = report["systems"][name]
        assert (s["rows"], s["evaluated"], s["error_rows"]) == (8, 6, 2)
        assert isinstance(s["entailment"], float) and isinstance(s["fluency"], float)
        assert isinstance(s["bleu_corpus"], float) and "nrefs:1" in s["bleu_signature"]
        assert s["meteor"] == (NOT_AVAILABLE_OFFLINE if not wordnet_available() else s["meteor"])
    metrics = {c["metric"] for c in report["significance"] if (c["system_a"], c["system_b"]) == ("a", "b")}
    assert {"parent_f1", "entailment", "semantic_support", "rouge_l", "bleu", "fluency"} <= metrics
    assert all(c["n"] == 6 for c in report["significance"])

    sweep = {e["alpha"]: e for e in report["mixtures"]}
    assert sorted(sweep) == [0.0, 0.5, 1.0]
    assert (sweep[1.0]["rows"], sweep[1.0]["evaluated"]) == (5, 4)
    assert [sweep[a]["mean_mixing_rate"] for a in (0.0, 0.5, 1.0)] == [0.0, 0.5, 1.0]
    f1 = [sweep[a]["C-"]["parent_f1"] for a in (0.0, 0.5, 1.0)]
    assert f1[0] > f1[1] > f1[2] == 0.0  # C- loses its grounding as alpha grows
    assert isinstance(sweep[0.5]["C-"]["fluency"], float)
    validity = {(v["metric"], v["alpha"]): v for v in report["metric_validity"]}
    assert validity[("parent_f1", 1.0)]["pairwise_accuracy"] == 1.0
    assert validity[("parent_f1", "all")]["n"] == 12
    assert validity[("parent_f1", "all")]["spearman_mixing_rate"]["rho"] < -0.8

    # Detector support for every system (the mean of its rows), and its validity on the held-out topics only.
    det = report["detector"]
    for name in ("a", "b"):
        rows = pq.read_table(out / "predictions" / f"{name}.parquet").to_pylist()
        mean = sum(r["detector_support"] for r in rows if r["error"] is None) / 6
        assert det["systems"][name] == {"evaluated": 6, "detector_support": pytest.approx(mean, abs=1e-4)}
    assert det["train_topics"] == 1 and det["heldout_pairs"] == 3 * 3  # m2-m4 at each alpha (m5 failed)
    assert "the-run/negatives" in det["note"]
    held = {v["metric"]: v for v in det["metric_validity"]}
    assert {"detector_support", "parent_f1"} <= set(held) and held["detector_support"]["n"] == 9

    md = (out / "report.md").read_text()
    assert "the-run/negatives" in md and "detector support" in md.lower()
    for heading in ("## Systems", "## Significance", "## Faithfulness vs fluency", "## Metric validity",
                    "## Examples"):
        assert heading in md
    for plot in ("systems", "alpha_sweep", "validity"):
        png = out / "plots" / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/{plot}.png" in md
    assert len(report["examples"]) == 2 and set(report["examples"][0]["questions"]) == {"a", "b"}
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 2 * 2 + 1  # two bad test rows per system, one failed mixture row
    run_info = json.loads((out / "run_info.json").read_text())
    assert run_info["stage"] == "evaluate" and (out / "config.yaml").is_file()
    assert run_info["metric_versions"]["sacrebleu"] == sacrebleu.__version__


def test_unconfigured_scores_are_words_not_numbers(tmp_path):
    # Only mixture samples, no NLI, fluency or embedding model: no model and no Ray is needed.
    cfg = EvaluateConfig(output_dir=str(tmp_path / "eval"), systems=[], nli_model=None, fluency_model=None,
                         embedding_model="no-such-embedding-package",
                         negatives_dirs={0.0: _write_negatives(tmp_path, 0.0), 1.0: _write_negatives(tmp_path, 1.0)})
    run_evaluate(cfg)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["metric_status"]["entailment"] == NOT_CONFIGURED
    assert report["metric_status"]["fluency"] == NOT_CONFIGURED
    assert report["metric_status"]["semantic_support"] == NOT_AVAILABLE
    for entry in report["mixtures"]:
        for side in ("C-", "C+"):
            assert entry[side]["entailment"] == NOT_CONFIGURED and entry[side]["fluency"] == NOT_CONFIGURED
            assert entry[side]["semantic_support"] == NOT_AVAILABLE
            assert isinstance(entry[side]["parent_f1"], float)
    assert {v["metric"] for v in report["metric_validity"]} == {"parent_precision", "parent_recall", "parent_f1"}
    md = (tmp_path / "eval" / "report.md").read_text()
    assert f"NLI entailment: **{NOT_CONFIGURED}**" in md and f"semantic support: **{NOT_AVAILABLE}**" in md
    mixtures = pq.read_table(tmp_path / "eval" / "mixtures.parquet").to_pylist()
    assert len(mixtures) == 8 and all(r["rejected_entailment"] is None for r in mixtures)
