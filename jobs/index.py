"""Build the passage corpus and index it: ``python -m jobs.index --config configs/index.yaml``."""

import sys

from jobs._door import run
from rac.retrieval import IndexConfig, run_index


def main(cfg: IndexConfig) -> None:
    result = run_index(cfg)
    print(f"indexed {result.rows_out} of {result.rows_in} passages ({result.details['backend']}); "
          f"outputs in {cfg.output_dir}")
    result.check_complete()


if __name__ == "__main__":
    sys.exit(run(IndexConfig, main))
