"""Train the unsupported-span detector: ``python -m jobs.train_detector --config configs/detector.yaml``."""

import sys

from jobs._door import run
from rac.detector import DetectorConfig
from rac.detector.train import run_train_detector


def main(cfg: DetectorConfig) -> None:
    summary = run_train_detector(cfg).details
    held = summary["heldout"]
    print(f"detector trained in {summary['train_seconds']} s on {summary['train_examples']} examples "
          f"({summary['train_topics']} topics): model in {summary['model_dir']}")
    print(f"held-out topics ({summary['heldout_topics']}, {summary['heldout_pairs']} pairs): question AUC "
          f"{held['question_auc']}, token AUC {held['token_auc']}, Spearman rho vs mixing rate "
          f"{held['spearman_mixing_rate']}; every score on the same pairs in {cfg.output_dir}/validity.md")


if __name__ == "__main__":
    sys.exit(run(DetectorConfig, main))
