"""Unfaithful negatives by mixture decoding:
``python -m jobs.generate_negatives --config configs/negatives.yaml``."""

import sys

from jobs._door import run
from rac.decoding import NegativesConfig, run_generate_negatives


def main(cfg: NegativesConfig) -> None:
    summary = run_generate_negatives(cfg)
    print(f"{summary['with_negative']} of {summary['rows_in']} rows of {cfg.splits} have a negative "
          f"(alpha {cfg.sampling.alpha}, realised mixing rate {summary['mean_mixing_rate']}); "
          f"{summary['error_rows']} error rows ({cfg.output_dir}/errors.jsonl); {summary['skipped']} were already "
          f"written, {summary['generated']} decoded now; outputs in {cfg.output_dir}/negatives")
    if summary["generation_failures"]:
        raise RuntimeError(f"decoding failed for {summary['generation_failures']} rows; they are recorded in "
                           f"{cfg.output_dir}/errors.jsonl; a rerun into the same output_dir decodes them again")


if __name__ == "__main__":
    sys.exit(run(NegativesConfig, main))
