"""A study of RAC variants: ``python -m jobs.experiment --config configs/experiments/demo.yaml``."""

import sys
from pathlib import Path

from jobs._door import run
from rac.experiment import ExperimentConfig, run_study


def main(cfg: ExperimentConfig) -> None:
    results = run_study(cfg)
    study = Path(cfg.study_dir).resolve()
    print(f"\nselected on validation: {results['selected']}")
    print((study / "results.md").read_text())
    print(f"study directory: {study}")


if __name__ == "__main__":
    sys.exit(run(ExperimentConfig, main))
