"""What a study found: ``results.json``, ``results.md`` and plots, from the stages' own outputs.

Per system (seeds pooled): the mean and 95% interval over seeds of every metric of the test
report, paired significance against grounded SFT and against the gamma = 0 baseline (per-row
scores averaged over seeds, :func:`rac.evaluation.significance.compare_systems`), the
validation table the selection was made on, and the diagnosis: metric validity on T2, how
often the gold facet's passage was retrieved, and question lengths.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from rac.data.corpus import passage_id
from rac.data.loaders import clean_text
from rac.evaluation.catalogue import LABELS, ROW_METRICS, is_figure
from rac.evaluation.config import CONTINUED_SFT, GROUNDED_SFT, RAC_SYSTEM, UNGROUNDED_SFT
from rac.evaluation.rendering import fmt, md_table, save_plot
from rac.evaluation.significance import compare_systems, over_seeds
from rac.experiment.config import CHECK_SCORE, ExperimentConfig, Variant
from rac.experiment.study import read_events, seed_name
from rac.pipeline import manifest_result
from rac.retrieval import read_retrieved
from rac.training import read_metrics

logger = logging.getLogger(__name__)

#: Columns of the Markdown tables (all metrics are in results.json).
SHOWN = ("bleu_corpus", "rouge_l", "meteor", "meteor_exact", "parent_precision", "parent_recall", "parent_f1",
         "semantic_support", "entailment", "fluency", "question_words")



def words(text: str | None) -> int:
    return len((text or "").split())


def prediction_rows(study: Path, split: str, system: str) -> dict[str, dict[str, Any]]:
    """The predictions of ``system`` in ``study/split`` (an evaluation stage's folder) by row id, words counted."""
    rows = pq.read_table(study / split / "predictions" / f"{system}.parquet").to_pylist()
    for r in rows:
        r["question_words"] = words(r["prediction"]) if r["error"] is None else None
    return {r["id"]: r for r in rows}


def row_scores(runs: list[dict[str, dict[str, Any]]], metric: str) -> dict[str, float]:
    """Per row id: ``metric`` averaged over the seeds' runs (rows scored in every run)."""
    out = {}
    for i in runs[0]:
        values = [run[i].get(metric) if i in run and run[i]["error"] is None else None for run in runs]
        if all(is_figure(v) for v in values):
            out[i] = statistics.fmean(values)
    return out


def _bootstrap_ci(values: list[float], samples: int, seed: int) -> list[float] | None:
    if len(values) < 2:
        return None
    arr = np.asarray(values)
    idx = np.random.default_rng(seed).integers(0, arr.size, size=(samples, arr.size))
    means = arr[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def system_entry(report: dict[str, Any], names: list[str], runs: list[dict[str, dict[str, Any]]],
                 samples: int, seed: int) -> dict[str, Any]:
    """Mean, per-seed values and 95% intervals (over seeds; over rows) of every metric of one system."""
    metrics: dict[str, Any] = {}
    summaries = [report["systems"][n] for n in names]
    keys = [k for k, v in summaries[0].items() if is_figure(v) and k not in ("rows", "evaluated", "error_rows",
                                                                            "with_reference")]
    for key in [*keys, "question_words"]:
        if key == "question_words":
            lengths = [[r["question_words"] for r in run.values() if r["question_words"] is not None] for run in runs]
            if not all(lengths):
                continue
            per_seed = [statistics.fmean(x) for x in lengths]
        else:
            per_seed = [s[key] for s in summaries if is_figure(s.get(key))]
            if len(per_seed) != len(summaries):
                continue
        entry = over_seeds(per_seed)
        if key in ROW_METRICS or key == "question_words":
            entry["ci95_rows"] = _bootstrap_ci(list(row_scores(runs, key).values()), samples, seed)
        metrics[key] = entry
    return {"runs": names, "seeds": len(names), "evaluated": [s["evaluated"] for s in summaries],
            "metrics": metrics}


def paired(runs_a: list[dict[str, dict[str, Any]]], runs_b: list[dict[str, dict[str, Any]]], metrics: list[str],
           samples: int, seed: int) -> dict[str, Any]:
    """Paired tests of a against b on every metric, seeds pooled (:func:`~rac.evaluation.significance.compare_systems`
    on seeds x rows): seed k of a against seed k of b, or against b's one run; rows scored in every run."""
    out = {}
    for metric in metrics:
        a, b = row_scores(runs_a, metric), row_scores(runs_b, metric)
        ids = sorted(set(a) & set(b))
        if len(ids) >= 2:
            out[metric] = compare_systems(seed_table(runs_a, metric, ids), seed_table(runs_b, metric, ids),
                                          samples=samples, seed=seed)
    return out


def seed_table(runs: list[dict[str, dict[str, Any]]], metric: str, ids: list[str]) -> list[list[float]]:
    """``metric`` of rows ``ids`` in each run (seed): seeds x rows."""
    return [[float(run[i][metric]) for i in ids] for run in runs]


def facet_passages(cfg: ExperimentConfig) -> dict[str, str]:
    """Facet id -> id of the passage made from that facet's own description (demo and Qulac), else {}."""
    if cfg.data.format == "demo":
        demo = json.loads(resources.files("rac.data").joinpath("demo/demo.json").read_text(encoding="utf-8"))
        return {f["facet_id"]: passage_id(clean_text(f["passage"])) for t in demo["topics"] for f in t["facets"]}
    if cfg.data.format == "qulac" and cfg.data.path:
        cols = json.loads(Path(cfg.data.path).read_text(encoding="utf-8"))
        return {f"{cols['topic_id'][k]}-{cols['facet_id'][k]}": passage_id(clean_text(str(cols["facet_desc"][k])))
                for k in cols["topic"]}
    return {}


def gold_passage_recall(cfg: ExperimentConfig, study: Path) -> dict[str, Any]:
    """Per split: share of rows whose gold facet's passage is among the retrieved passages."""
    facets = facet_passages(cfg)
    if not facets:
        return {"status": f"not available for data.format {cfg.data.format!r} (no facet descriptions)"}
    out: dict[str, Any] = {}
    for folder in ("select", "test"):
        for r in read_retrieved(study / "splits" / folder).to_pylist():
            entry = out.setdefault(r["split"], {"rows": 0, "with_facet_passage": 0, "at_rank_1": 0})
            gold = facets.get(r.get("facet_id"))
            ids = [p["id"] for p in r["passages"] or []]
            entry["rows"] += 1
            entry["with_facet_passage"] += gold in ids
            entry["at_rank_1"] += bool(ids) and ids[0] == gold
    for entry in out.values():
        entry["share"] = entry["with_facet_passage"] / entry["rows"] if entry["rows"] else None
    return out


#: Logged training figures shown per run: which term of L_RAC moved, and what it did to the rewards.
TRAINING_TERMS = ("sft_loss", "pref_loss", "reward_margin", "reward_accuracy", "eval_sft_loss", "eval_pref_loss",
                  "eval_reward_margin", "eval_reward_accuracy")
#: What an SFT run (the gamma = 0 baseline) logs its only term as.
SFT_ONLY = {"sft_loss": "loss", "eval_sft_loss": "eval_loss"}


def training_terms(study: Path, runs: list[str]) -> dict[str, Any]:
    """Per training run (``train/<run>``): first and last logged value of each of :data:`TRAINING_TERMS`."""
    out: dict[str, Any] = {}
    for run in runs:
        records = read_metrics(study / "train" / run)
        terms = {}
        for key in TRAINING_TERMS:
            source = key if any(key in r for r in records) else SFT_ONLY.get(key)
            values = [r[source] for r in records if source and is_figure(r.get(source))]
            if values:
                terms[key] = {"first": values[0], "last": values[-1]}
        if terms:
            out[run] = {"steps": max((r.get("step") or 0) for r in records), **terms}
    return out


def validity_tables(study: Path) -> dict[str, Any]:
    """Metric validity and the mixture sweep on T2, per chosen source (the validity/ stages)."""
    out = {}
    for path in sorted(study.glob("validity/*/report.json")):
        report = json.loads(path.read_text())
        out[path.parent.name] = {"metric_validity": report["metric_validity"], "mixtures": report["mixtures"]}
    return out


def pair_construction(manifests: dict[str, dict[str, Any]], variants: list[Variant],
                      seeds: list[int]) -> list[dict[str, Any]]:
    """Per (alpha, pairs) built by a pairs stage: what was kept and dropped, and per faithfulness score
    how often C+ beats C- on the pairs kept (``validity``) and on all pairs (``validity_all``), each
    over seeds; ``built_with`` marks the score that built or filtered them."""
    out = []
    for alpha, tag in dict.fromkeys((v.alpha, v.pairs.tag) for v in variants if v.pairs.tag != "gold"):
        stages = [f"pairs/a{alpha:g}-{tag}-s{s}" for s in seeds]
        details = [manifest_result(manifests[st]).details for st in stages if st in manifests]
        if not details:
            continue
        entry: dict[str, Any] = {"alpha": alpha, "pairs": tag, "chosen": details[0]["chosen"],
                                 "score": details[0]["score"], "seeds": len(details)}
        for key in ("with_negative", "without_candidate", "dropped_by_gold_recall", "dropped_by_margin", "kept",
                    "identical_pairs"):
            entry[key] = over_seeds([d[key] for d in details])
        for scope in ("validity", "validity_all"):
            metrics = [m for m in details[0][scope] if all(m in d[scope] for d in details)]
            entry[scope] = {m: {"built_with": details[0][scope][m]["built_with"],
                                **{k: over_seeds([d[scope][m][k] for d in details])
                                   for k in ("pairwise_accuracy", "mean_margin")}} for m in metrics}
        out.append(entry)
    return out


#: A gain on test: the paired difference is positive with bootstrap p below this.
GAIN_P = 0.05


def metric_gaming(selected: Variant, significance: dict[str, Any]) -> dict[str, Any]:
    """Does the selected setting gain on test only on the score that built its pairs?

    For each baseline: a gain (difference > 0, seed-pooled bootstrap p < :data:`GAIN_P`) on the
    build score and on the score not used (:data:`~rac.experiment.config.CHECK_SCORE`), and the
    verdict: a gain on the build score alone is metric gaming.
    """
    build = selected.pairs.build_score
    if build is None:
        return {"build_score": None, "check_score": None,
                "verdict": "the selected setting's pairs were neither ranked nor filtered by a score"}
    check = CHECK_SCORE[build]
    out: dict[str, Any] = {"build_score": build, "check_score": check, "comparisons": {}}
    for comparison, by_metric in significance.items():
        if not comparison.startswith(f"{RAC_SYSTEM} vs "):
            continue
        gains = {m: m in by_metric and by_metric[m]["mean_diff"] > 0 and by_metric[m]["bootstrap"]["p_value"] < GAIN_P
                 for m in (build, check)}
        verdict = ("metric gaming: a gain only on the score that built the pairs" if gains[build] and not gains[check]
                   else "a gain on both scores" if gains[build] else
                   "a gain only on the score not used" if gains[check] else "no gain on either score")
        out["comparisons"][comparison] = {"gain_on_build_score": gains[build], "gain_on_check_score": gains[check],
                                          "verdict": verdict}
    out["gaming"] = any(c["verdict"].startswith("metric gaming") for c in out["comparisons"].values())
    return out


def system_families(cfg: ExperimentConfig, selected: str) -> dict[str, list[str]]:
    """The evaluated systems of each family (the baselines, and RAC as the ``selected`` variant): one
    run per seed, or one run for an SFT model trained once."""
    per_seed = {GROUNDED_SFT: "grounded" in cfg.sft_per_seed, UNGROUNDED_SFT: "ungrounded" in cfg.sft_per_seed}
    return {**{f: [seed_name(f, s) for s in cfg.seeds] if seeded else [f] for f, seeded in per_seed.items()},
            CONTINUED_SFT: [seed_name(CONTINUED_SFT, s) for s in cfg.seeds],
            RAC_SYSTEM: [seed_name(selected, s) for s in cfg.seeds]}


def write_results(cfg: ExperimentConfig, study: Path, variants: list[Variant], selected: Variant,
                  manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and ``plots/`` into ``study``; returns the results."""
    samples, seed = cfg.evaluate.bootstrap_samples, cfg.evaluate.seed
    test_report = json.loads((study / "test" / "report.json").read_text())
    families = system_families(cfg, selected.name)
    runs = {f: [prediction_rows(study, "test", n) for n in names] for f, names in families.items()}
    systems = {f: system_entry(test_report, names, runs[f], samples, seed) for f, names in families.items()}
    metrics = [m for m in (*ROW_METRICS, "question_words") if m in systems[GROUNDED_SFT]["metrics"]]
    comparisons = [(a, b) for b in (GROUNDED_SFT, CONTINUED_SFT) for a in families if a not in (b, GROUNDED_SFT)]
    significance = {f"{a} vs {b}": paired(runs[a], runs[b], metrics, samples, seed) for a, b in comparisons}
    selection = json.loads((study / "selection" / "selection.json").read_text())
    gold_words = [words(r["question"]) for r in runs[GROUNDED_SFT][0].values() if r.get("question")]
    lengths = {"gold": statistics.fmean(gold_words) if gold_words else None,
               **{f: s["metrics"].get("question_words", {}).get("mean") for f, s in systems.items()}}
    results = {
        "study_dir": str(study), "selected": selected.name,
        "variants": [dataclasses.asdict(v) | {"name": v.name, "pairs_tag": v.pairs.tag} for v in variants],
        "seeds": cfg.seeds, "test_rows": test_report["systems"][families[GROUNDED_SFT][0]]["rows"],
        # More than 1: the grid or settings changed after test was seen; the log says when.
        "test_evaluations": sum(e["stage"] == "test" and e["event"] == "finished" for e in read_events(study)),
        "systems": systems,
        "significance": significance, "selection": selection,
        "pairs": pair_construction(manifests, variants, cfg.seeds),
        "metric_gaming": metric_gaming(selected, significance),
        "diagnosis": {"validity_t2": validity_tables(study), "gold_passage_retrieved": gold_passage_recall(cfg, study),
                      "mean_question_words": lengths,
                      "training_terms": training_terms(study, [seed_name(n, sd) for sd in cfg.seeds
                                                               for n in (CONTINUED_SFT, *(v.name for v in variants))])},
        "stages": {n: {"skipped": m.get("skipped"), "seconds": m.get("seconds")} for n, m in manifests.items()},
        "metric_status": test_report.get("metric_status", {}),
    }
    plots = write_plots(results, variants, study / "plots")
    results["plots"] = plots
    (study / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (study / "results.md").write_text(results_markdown(results, variants))
    logger.info("study results: %s", study / "results.md")
    return results


# ----------------------------------------------------------------------------- plots


def _variant_rows(results: dict[str, Any], variants: list[Variant]) -> list[tuple[Variant, dict[str, Any]]]:
    table = {row["system"]: row for row in results["selection"]["table"]}
    return [(v, table[v.name]) for v in variants if v.name in table]


def write_plots(results: dict[str, Any], variants: list[Variant], plots_dir: Path) -> dict[str, str]:
    """Faithfulness against ROUGE-L per variant and against alpha (validation), question lengths (test)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plots_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    rows = _variant_rows(results, variants)
    baselines = [row for row in results["selection"]["table"] if not row["system"].startswith("rac-")]
    faith = [m for m in ("parent_f1", "semantic_support") if rows and is_figure(rows[0][1].get(m))]

    fig, axes = plt.subplots(1, max(1, len(faith)), figsize=(6 * max(1, len(faith)), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], faith, strict=False):
        for v, row in rows:
            ax.scatter(row["rouge_l"], row[metric], marker="o")
            ax.annotate(v.name.removeprefix("rac-"), (row["rouge_l"], row[metric]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
        for row in baselines:
            if is_figure(row.get(metric)):
                ax.scatter(row["rouge_l"], row[metric], marker="s", color="black")
                ax.annotate(row["system"], (row["rouge_l"], row[metric]), fontsize=7, textcoords="offset points",
                            xytext=(3, -9))
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel(LABELS["rouge_l"])
        ax.set_ylabel(LABELS[metric])
        ax.set_title(f"Validation: {LABELS[metric]} vs ROUGE-L")
    written["faithfulness_vs_rouge"] = save_plot(fig, plots_dir, "faithfulness_vs_rouge")

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    groups: dict[str, list[tuple[float, float]]] = {}
    for v, row in rows:
        if is_figure(row.get("parent_f1")):
            groups.setdefault(f"RAC g{v.gamma:g} b{v.beta:g} {v.loss_type} {v.pairs.tag}", []).append(
                (v.alpha, row["parent_f1"]))
    for label, points in groups.items():
        points.sort()
        ax.plot([a for a, _ in points], [y for _, y in points], marker="o", label=f"{label} (validation)")
    for source, tables in results["diagnosis"]["validity_t2"].items():
        sweep = [e for e in tables["mixtures"] if is_figure(e["C-"].get("parent_f1"))]
        if sweep:
            ax.plot([e["alpha"] for e in sweep], [e["C-"]["parent_f1"] for e in sweep], linestyle="--", marker="x",
                    label=f"C- on T2 ({source} pairs)")
    ax.set_xlabel("alpha (mixing rate of the negatives)")
    ax.set_ylabel(LABELS["parent_f1"])
    ax.set_title("Faithfulness against alpha")
    ax.legend(fontsize=7)
    written["faithfulness_vs_alpha"] = save_plot(fig, plots_dir, "faithfulness_vs_alpha")

    lengths = results["diagnosis"]["mean_question_words"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [k for k, v in lengths.items() if is_figure(v)]
    ax.bar(names, [lengths[k] for k in names], color=["grey", *["C0"] * (len(names) - 1)])
    ax.set_ylabel("mean words per question (test)")
    ax.set_title("Question length per system")
    written["question_length"] = save_plot(fig, plots_dir, "question_length")
    return written


# ----------------------------------------------------------------------------- Markdown


def _cell(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "–"
    ci = entry.get("ci95_seeds") or entry.get("ci95_rows")
    mark = "" if entry.get("ci95_seeds") else "*"
    return f"{fmt(entry['mean'])} [{fmt(ci[0])}, {fmt(ci[1])}]{mark}" if ci else fmt(entry["mean"])


def _label(metric: str) -> str:
    return {"question_words": "words/question"}.get(metric, LABELS.get(metric, metric))


def results_markdown(results: dict[str, Any], variants: list[Variant]) -> str:
    """The study's results as Markdown (tables of results.json, the plots linked)."""
    systems = results["systems"]
    shown = [m for m in SHOWN if m in systems[GROUNDED_SFT]["metrics"]]
    sel = results["selection"]
    lines = [f"# Study results: {Path(results['study_dir']).name}", "",
             f"Selected RAC setting (on validation): **{results['selected']}**. Rule: {sel['rule']}"
             + ("." if sel["met_guard"] else "; **no variant met the guard**, so the best by the metric was taken."),
             *(["", f"**Test was evaluated {results['test_evaluations']} times in this study directory** (the "
                f"settings changed after a test evaluation; see events.jsonl): these figures are not untouched "
                f"by test."] if results["test_evaluations"] > 1 else []),
             "", f"## Test ({results['test_rows']} rows; seeds {results['seeds']})", "",
             "Mean over seeds with the 95% interval over seeds (Student t); `*`: one run (the SFT models are "
             "trained once, or one seed), so the interval is a bootstrap over the test rows instead.", "",
             md_table(["system", *(_label(m) for m in shown)],
                    [[name, *(_cell(s["metrics"].get(m)) for m in shown)] for name, s in systems.items()]), ""]
    lines += ["## Paired significance (seeds pooled)", "",
              "Seed k of a system against seed k of the other (a system trained once: its one run). Bootstrap: "
              "rows and seeds both resampled (pigeonhole bootstrap), two-sided; t-test and d_z over rows of the "
              "differences averaged over seeds; per seed: the mean difference of each seed, with its 95% interval "
              "over seeds.", "",
              md_table(["comparison", "metric", "mean a", "mean b", "diff", "bootstrap p", "t-test p", "d_z",
                        "diff per seed [95% over seeds]", "seeds a better"],
                     [[comp, _label(m), fmt(r["mean_a"]), fmt(r["mean_b"]), fmt(r["mean_diff"]),
                       fmt(r["bootstrap"]["p_value"]), fmt(r["t_test"]["p_value"]), fmt(r["cohens_d"]),
                       _cell(over_seeds(r["per_seed_diff"])), f"{r['seeds_a_better']}/{r['seeds']}"]
                      for comp, by_metric in results["significance"].items() for m, r in by_metric.items()
                      if m in ("rouge_l", "meteor", "parent_f1", "semantic_support", "entailment", "question_words")]),
              ""]
    lines += gaming_markdown(results["metric_gaming"])
    val_cols = [m for m in ("rouge_l", "parent_precision", "parent_recall", "parent_f1", "semantic_support",
                            "bleu_corpus") if any(m in row for row in sel["table"])]
    lines += ["## Validation table (what the selection saw)", "",
              "Mean over seeds [95% interval over seeds, where a system has several].", "",
              md_table(["system", "seeds", *(_label(m) for m in val_cols), "qualifies"],
                     [[row["system"], row["seeds"], *(_cell({"mean": row[m], "ci95_seeds": row.get(
                         "ci95_seeds", {}).get(m)}) if m in row else "–" for m in val_cols),
                       fmt(row.get("qualifies"))] for row in sel["table"]]), ""]
    lines += pairs_markdown(results["pairs"])
    lines += diagnosis_markdown(results["diagnosis"])
    ran = {name: st for name, st in results["stages"].items() if not st["skipped"]}
    total = sum(st["seconds"] or 0 for st in results["stages"].values())
    lines += ["## Stages", "", f"The stages took {total / 60:.1f} min in all (as each last ran); {len(ran)} of "
              f"{len(results['stages'])} ran in this invocation. Seconds per stage: "
              + ", ".join(f"{n} {st['seconds']}" for n, st in results["stages"].items()), ""]
    lines += ["## Plots", ""] + [f"![{k}]({Path(v).relative_to(Path(results['study_dir']))})"
                                  for k, v in results["plots"].items()]
    if results["metric_status"]:
        lines += ["", "Without a number: " + "; ".join(f"{k}: {v}" for k, v in results["metric_status"].items())]
    return "\n".join(lines) + "\n"


def gaming_markdown(gaming: dict[str, Any]) -> list[str]:
    lines = ["## Metric gaming check", ""]
    if gaming["build_score"] is None:
        return lines + [f"Not applicable: {gaming['verdict']}.", ""]
    lines += [f"The selected setting's pairs were built with **{_label(gaming['build_score'])}**; "
              f"**{_label(gaming['check_score'])}** was not used to build them. A gain on test (difference > 0, "
              f"bootstrap p < {GAIN_P}) on the build score alone is metric gaming.", "",
              md_table(["comparison", f"gain on {_label(gaming['build_score'])} (used)",
                        f"gain on {_label(gaming['check_score'])} (not used)", "verdict"],
                       [[c, fmt(e["gain_on_build_score"]), fmt(e["gain_on_check_score"]), e["verdict"]]
                        for c, e in gaming["comparisons"].items()]), ""]
    if gaming["gaming"]:
        lines += ["**Metric gaming:** the gain appears only on the score used to build the pairs.", ""]
    return lines


def pairs_markdown(pairs: list[dict[str, Any]]) -> list[str]:
    """What each pair construction kept and dropped, and whether C+ beats C- by each score."""
    if not pairs:
        return []
    lines = ["## Pairs (T2, built by the pairs stages; mean over seeds [95% interval over seeds])", "",
             md_table(["alpha", "pairs", "C+", "built with", "seeds", "with C-", "no alpha-0 sample",
                       "dropped: gold recall", "dropped: margin", "kept", "C+ = C-"],
                      [[e["alpha"], e["pairs"], e["chosen"], _label(e["score"]) if e["score"] else "–", e["seeds"],
                        *(_cell(e[k]) for k in ("with_negative", "without_candidate", "dropped_by_gold_recall",
                                                "dropped_by_margin", "kept", "identical_pairs"))] for e in pairs]),
             "", "**Does C+ beat C-?** Share of pairs with s(C+) > s(C-) (ties 1/2) and the mean s(C+) - s(C-), by "
             "each score. A score marked *built* ranked or filtered the pairs, so it beats C- by construction: the "
             "validity of the pairs is read on the scores *not used*.", "",
             md_table(["alpha", "pairs", "score", "used", "pairwise acc. (kept)", "mean margin (kept)",
                       "pairwise acc. (all, before filters)"],
                      [[e["alpha"], e["pairs"], _label(m), "built" if v["built_with"] else "not used",
                        _cell(v["pairwise_accuracy"]), _cell(v["mean_margin"]),
                        _cell(e["validity_all"].get(m, {}).get("pairwise_accuracy"))]
                       for e in pairs for m, v in e["validity"].items()]), ""]
    return lines


def diagnosis_markdown(diagnosis: dict[str, Any]) -> list[str]:
    lines = ["## Diagnosis", "", "**Metric validity on T2** (does a faithfulness score rank C+ above C-? AUC 0.5 "
             "is chance; rho < 0 means the score falls as the realised mixing rate rises):", ""]
    rows = [[source, _label(e["metric"]), e["alpha"], e["n"], fmt(e["auc"]), fmt(e["pairwise_accuracy"]),
             fmt(e["spearman_mixing_rate"]["rho"])]
            for source, t in diagnosis["validity_t2"].items() for e in t["metric_validity"]]
    lines += [md_table(["C+ source", "metric", "alpha", "pairs", "AUC", "pairwise acc.", "rho vs mixing rate"], rows),
              ""]
    recall = diagnosis["gold_passage_retrieved"]
    if "status" in recall:
        lines += [f"**Gold facet passage retrieved:** {recall['status']}", ""]
    else:
        lines += ["**Gold facet passage retrieved** (share of rows whose facet's own description is among the "
                  "retrieved passages):", "",
                  md_table(["split", "rows", "retrieved", "share", "at rank 1"],
                         [[s, e["rows"], e["with_facet_passage"], fmt(e["share"]), e["at_rank_1"]]
                          for s, e in recall.items()]), ""]
    terms = diagnosis.get("training_terms") or {}
    if terms:
        def moved(t: dict[str, Any], key: str) -> str:
            return f"{fmt(t[key]['first'])} → {fmt(t[key]['last'])}" if key in t else "–"

        lines += ["**Training terms** (first → last logged value; eval_* on the held-out training topics):", "",
                  md_table(["run", "steps", "SFT loss", "pref. loss", "reward margin", "eval reward acc."],
                         [[run, t["steps"], moved(t, "sft_loss"), moved(t, "pref_loss"), moved(t, "reward_margin"),
                           moved(t, "eval_reward_accuracy")] for run, t in terms.items()]), ""]
    lengths = diagnosis["mean_question_words"]
    lines += ["**Mean question length (words, test):** " + ", ".join(f"{k} {fmt(v, 2)}" for k, v in lengths.items()),
              ""]
    return lines
