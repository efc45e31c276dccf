"""Build the passage corpus and index it: ``python -m jobs.index --config configs/index.yaml``."""

import sys

from jobs._door import run
from rac.failures import check_complete
from rac.retrieval import IndexConfig, run_index


def main(cfg: IndexConfig) -> None:
    summary = run_index(cfg)
    print(f"indexed {summary['indexed']} of {summary['passages']} passages ({summary['backend']}); "
          f"outputs in {cfg.output_dir}")
    check_complete("index", summary)


if __name__ == "__main__":
    sys.exit(run(IndexConfig, main))
