"""Unfaithful negatives by mixture decoding:
``python -m jobs.generate_negatives --config configs/negatives.yaml``."""

import sys

from jobs._door import run
from rac.decoding import NegativesConfig, run_generate_negatives
from rac.decoding.memory import check_memory as preflight


def main(cfg: NegativesConfig) -> None:
    result = run_generate_negatives(cfg)
    d = result.details
    print(f"{result.rows_out} of {result.rows_in} rows of {cfg.splits} have a negative "
          f"(alpha {cfg.sampling.alpha}, realised mixing rate {d['mean_mixing_rate']}); "
          f"{d['error_rows']} error rows ({cfg.output_dir}/errors.jsonl); {d['skipped']} were already "
          f"written, {d['generated']} decoded now; outputs in {cfg.output_dir}/negatives")
    result.check_complete()


if __name__ == "__main__":
    sys.exit(run(NegativesConfig, main, preflight=preflight))
