"""jobs.train_detector: bad configs stop it with a message; on a synthetic set it finds the inserted spans."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs._door import run
from rac.detector import DetectorConfig
from rac.detector.train import run_train_detector


@pytest.fixture(scope="module")
def lm_tokenizer_dir(tmp_path_factory) -> Path:
    from rac.testing.tiny import demo_texts, train_tiny_tokenizer

    path = tmp_path_factory.mktemp("lm-tokenizer")
    train_tiny_tokenizer(demo_texts()).save_pretrained(str(path))
    return path


def synthetic_rows(tokenizer, n: int, seed: int) -> list[dict]:
    """Questions built from their passage's words with two words of a foreign passage inserted;
    provenance 1 on exactly the tokens of the inserted words."""
    from rac.evaluation.grounding import content_tokens
    from rac.testing.tiny import demo_texts

    words = sorted({w for w in content_tokens(" ".join(demo_texts())) if w.isalpha() and len(w) > 3})
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sample = rng.sample(words, 14)
        passage, foreign = sample[:12], sample[12:]
        kept = rng.sample(passage, 3)
        at = rng.randrange(len(kept) + 1)
        question = "are you looking for " + " ".join(kept[:at] + foreign + kept[at:]) + "?"
        enc = tokenizer(" " + question, return_offsets_mapping=True)
        inserted = [(question.index(f" {f}") + 1, question.index(f" {f}") + 1 + len(f)) for f in foreign]
        # Offsets are into " " + question: shift by one.
        provenance = [int(any(s - 1 < e0 and e - 1 > s0 for s0, e0 in inserted)) for s, e in enc["offset_mapping"]]
        rows.append({"id": f"s{i:04d}", "query": kept[0], "passages": [{"id": f"p{i}", "text": " ".join(passage),
                                                                        "score": 1.0}],
                     "passages_used": 1, "chosen": "are you looking for " + " ".join(rng.sample(passage, 3)) + "?",
                     "rejected": question, "rejected_token_ids": enc["input_ids"], "provenance": provenance,
                     "mixing_rate": sum(provenance) / len(provenance), "finish_reason": "question", "alpha": 0.5,
                     "seed": i, "grounded_model": "x", "ungrounded_model": "y", "topic_id": f"t{i % 20}",
                     "facet_id": f"f{i}", "split": "t2", "error": None, "foreign": foreign})
    return rows


def write_negatives(rows: list[dict], out: Path, drop: tuple[str, ...] = ()) -> Path:
    from rac.decoding.stage import NEGATIVES_SCHEMA

    schema = pa.schema([f for f in NEGATIVES_SCHEMA if f.name not in drop])
    (out / "negatives").mkdir(parents=True)
    table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema)
    pq.write_table(table, out / "negatives" / "part-0.parquet")
    return out


def test_unknown_base_model_stops_with_exit_1_naming_it(tmp_path, capsys):
    code = run(DetectorConfig, run_train_detector, ["--negatives_dirs", f"[{tmp_path}]", "--base_model",
                                                    "no-such-encoder"], use_ray=False)
    err = capsys.readouterr().err
    assert code == 1 and "base_model 'no-such-encoder' is neither a local Hugging Face encoder directory" in err
    assert "Traceback" not in err


def test_negatives_without_provenance_stop_with_exit_1(tmp_path, lm_tokenizer_dir, capsys):
    from transformers import AutoTokenizer

    rows = synthetic_rows(AutoTokenizer.from_pretrained(str(lm_tokenizer_dir)), 4, seed=0)
    out = write_negatives(rows, tmp_path / "negs", drop=("provenance",))
    code = run(DetectorConfig, run_train_detector, ["--negatives_dirs", f"[{out}]", "--lm_tokenizer",
                                                    str(lm_tokenizer_dir)], use_ray=False)
    err = capsys.readouterr().err
    assert code == 1 and "no per-token provenance" in err and str(out) in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--heldout_fraction", "0"], "heldout_fraction must be in (0, 1)"),
    (["--max_length", "4096"], "max_length must be in [16, 512]"),
    (["--negatives_dirs", "[]"], "negatives_dirs must name at least one"),
    (["--cv_folds", "1"], "cv_folds must be 0 (off) or at least 2"),
])
def test_impossible_values_are_config_errors(args, message, capsys):
    assert run(DetectorConfig, run_train_detector, args, use_ray=False) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_detector_flags_inserted_foreign_words(ray_local, tmp_path, lm_tokenizer_dir):
    """The real job (Ray Train, the packaged MiniLM) on a synthetic set whose unsupported spans are known."""
    from transformers import AutoTokenizer

    from rac.detector import UnsupportedSpanDetector

    tokenizer = AutoTokenizer.from_pretrained(str(lm_tokenizer_dir))
    rows = synthetic_rows(tokenizer, 200, seed=0)
    negatives = write_negatives(rows, tmp_path / "negs")
    cfg = DetectorConfig(negatives_dirs=[str(negatives)], output_dir=str(tmp_path / "det"),
                         lm_tokenizer=str(lm_tokenizer_dir), max_length=64, num_epochs=3, per_worker_batch_size=16,
                         learning_rate=2e-4, heldout_fraction=0.2)
    summary = run_train_detector(cfg)
    assert summary.details["heldout"]["token_auc"] > 0.9 and summary.details["heldout"]["question_auc"] > 0.9, summary
    detector = UnsupportedSpanDetector(summary.details["model_dir"])
    test = synthetic_rows(tokenizer, 40, seed=1)
    results = detector.score([r["rejected"] for r in test], [r["passages"] for r in test])
    found = [{w for s in res.spans(0.5) for w in s["text"].split()} for res in results]
    hits = sum(len(f & set(r["foreign"])) for f, r in zip(found, test, strict=True))
    false = sum(len(f - set(r["foreign"])) for f, r in zip(found, test, strict=True))
    assert hits >= 0.7 * 2 * len(test) and false <= 0.1 * len(test), (hits, false)


def test_cross_validation_scores_every_pair_with_a_detector_that_never_saw_its_topic(tmp_path, lm_tokenizer_dir,
                                                                                     monkeypatch):
    """cv_folds: k detectors, the held-out topics of the k folds partition the topics, every pair is scored
    once. Training itself is replaced by a tiny exported detector (the real training is the slow test above)."""
    import json

    from transformers import AutoTokenizer

    import rac.detector.train as train
    from rac.config import from_dict
    from rac.testing.tiny import demo_texts, save_tiny_encoder

    tokenizer = AutoTokenizer.from_pretrained(str(lm_tokenizer_dir))
    rows = synthetic_rows(tokenizer, 30, seed=0)  # topics t0..t19
    words = sorted({w.lower() for r in rows for t in (r["rejected"], r["chosen"], r["passages"][0]["text"])
                    for w in t.replace("?", " ").split()} | set(" ".join(demo_texts()).lower().split()))
    base = save_tiny_encoder(tmp_path / "base", words)
    fits = []

    def fake_fit(cfg, base_model, lm_path, examples, info):
        fits.append((Path(cfg.output_dir).name, set(info["train_topics"])))
        return save_tiny_encoder(Path(cfg.output_dir) / "model", words, num_labels=2,
                                 info={"max_length": cfg.max_length, "threshold": 0.5}), 1.0

    monkeypatch.setattr(train, "fit_detector", fake_fit)
    cfg = from_dict(DetectorConfig, {
        "negatives_dirs": [str(write_negatives(rows, tmp_path / "negs"))], "output_dir": str(tmp_path / "det"),
        "base_model": str(base), "lm_tokenizer": str(lm_tokenizer_dir), "max_length": 64, "cv_folds": 3,
        "per_worker_batch_size": 2, "scaling": {"num_workers": 1, "cpus_per_worker": 1, "check_resources": False}})
    summary = run_train_detector(cfg)

    topics = {r["topic_id"] for r in rows}
    assert [name for name, _ in fits] == ["det", "fold-0", "fold-1", "fold-2"]
    held = [topics - seen for _, seen in fits[1:]]
    assert all(h and seen for h, (_, seen) in zip(held, fits[1:], strict=True)), "each fold trains and holds out"
    assert set().union(*held) == topics and sum(len(h) for h in held) == len(topics), "folds partition the topics"
    figures = json.loads((tmp_path / "det" / "validity.json").read_text())
    cv = figures["cross_validated"]
    assert cv["pairs"] == len(rows) and cv["topics"] == len(topics) and cv["folds"] == 3
    assert {e["metric"] for e in cv["metric_validity"]} >= {"detector_support", "parent_f1", "semantic_support"}
    assert all(e["n"] == len(rows) for e in cv["metric_validity"])
    assert figures["pairs"] < len(rows)  # the single held-out split scores a fraction only
    assert summary.details["cross_validated"]["pairs"] == len(rows)
    assert "3-fold cross-validation" in (tmp_path / "det" / "validity.md").read_text()
