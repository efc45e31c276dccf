"""Train with the joint objective: ``python -m jobs.train_rac --config configs/rac.yaml``."""

import sys

from jobs._door import run
from rac.training import RACConfig, run_rac
from rac.training.memory import check_memory as preflight


def main(cfg: RACConfig) -> None:
    d = run_rac(cfg).details
    print(f"RAC training done: model in {d['model_dir']}; final metrics {d['final_metrics']}")


if __name__ == "__main__":
    sys.exit(run(RACConfig, main, preflight=preflight))
