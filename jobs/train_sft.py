"""Train p_theta0 (grounded) or p_uncond (ungrounded): ``python -m jobs.train_sft --config configs/sft.yaml``."""

import sys

from jobs._door import run
from rac.training import SFTConfig, run_sft
from rac.training.memory import check_memory as preflight


def main(cfg: SFTConfig) -> None:
    d = run_sft(cfg).details
    print(f"{'grounded' if cfg.grounded else 'ungrounded'} SFT done: model in {d['model_dir']}; "
          f"final metrics {d['final_metrics']}")


if __name__ == "__main__":
    sys.exit(run(SFTConfig, main, preflight=preflight))
