"""The chosen-SFT ablation of a finished study (:mod:`rac.experiment.ablation`):
``python -m jobs.ablation --config configs/experiments/qulac-pairs.yaml``."""

import sys
from pathlib import Path

from jobs._door import run
from rac.experiment import ExperimentConfig
from rac.experiment.ablation import CHOSEN_SFT, run_chosen_sft_ablation


def main(cfg: ExperimentConfig) -> None:
    out = run_chosen_sft_ablation(cfg)
    for split, entry in out["splits"].items():
        print(f"\n{split}: {CHOSEN_SFT} " + ", ".join(
            f"{m} {e['mean']:.3f}" for m, e in entry[CHOSEN_SFT]["metrics"].items()
            if m in ("rouge_l", "parent_f1", "semantic_support")))
        for comp, by_metric in entry["significance"].items():
            print(f"  {comp}: " + "; ".join(
                f"{m} {r['mean_diff']:+.3f} (p {r['bootstrap']['p_value']:.3g})" for m, r in by_metric.items()
                if m in ("rouge_l", "parent_f1", "semantic_support")))
    print(f"\n{Path(cfg.study_dir).resolve() / 'ablation' / 'results.json'}")


if __name__ == "__main__":
    sys.exit(run(ExperimentConfig, main))
