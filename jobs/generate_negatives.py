"""Unfaithful negatives by mixture decoding:
``python -m jobs.generate_negatives --config configs/negatives.yaml``."""

import sys

from jobs._door import run
from rac.decoding import NegativesConfig, run_generate_negatives
from rac.failures import check_complete


def main(cfg: NegativesConfig) -> None:
    summary = run_generate_negatives(cfg)
    print(f"{summary['with_negative']} of {summary['rows_in']} rows of {cfg.splits} have a negative "
          f"(alpha {cfg.sampling.alpha}, realised mixing rate {summary['mean_mixing_rate']}); "
          f"{summary['error_rows']} error rows ({cfg.output_dir}/errors.jsonl); {summary['skipped']} were already "
          f"written, {summary['generated']} decoded now; outputs in {cfg.output_dir}/negatives")
    check_complete("negatives", summary)


if __name__ == "__main__":
    sys.exit(run(NegativesConfig, main))
