"""The evaluation report for people: PNG plots and a Markdown report of every figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rac.evaluation.catalogue import DETECTOR_METRIC, LABELS, MIXTURE_METRICS, ROW_METRICS, is_figure


def save_plot(fig: Any, plots_dir: Path, name: str) -> str:
    """Write ``fig`` to ``plots_dir/<name>.png`` (laid out, 120 dpi) and close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = str(plots_dir / f"{name}.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
                   if any(is_figure(s.get(m)) for s in systems.values())]
    if systems and bar_metrics:
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(bar_metrics) * max(1, len(systems)) / 2), 4))
        width = 0.8 / len(systems)
        for j, (name, s) in enumerate(systems.items()):
            values = [s[m] if is_figure(s.get(m)) else 0.0 for m in bar_metrics]
            ax.bar([i + j * width for i in range(len(bar_metrics))], values, width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(bar_metrics))])
        ax.set_xticklabels([LABELS[m] for m in bar_metrics], rotation=20, ha="right")
        ax.set_ylabel("mean score")
        ax.set_title("Systems on the test rows")
        ax.legend()
        written["systems"] = save_plot(fig, plots_dir, "systems")

    sweep = report["mixtures"]
    if sweep:
        faith = [m for m in ("parent_f1", "semantic_support", "entailment") if is_figure(sweep[0]["C-"][m])]
        has_fluency = all(is_figure(e["C-"]["fluency"]) for e in sweep)
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
        written["alpha_sweep"] = save_plot(fig, plots_dir, "alpha_sweep")

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
            written["validity"] = save_plot(fig, plots_dir, "validity")
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
