"""Retrieve passages for every query: ``python -m jobs.retrieve --config configs/retrieve.yaml``."""

import sys

from jobs._door import run
from rac.failures import check_complete
from rac.retrieval import RetrieveConfig, format_examples, read_retrieved, run_retrieve


def main(cfg: RetrieveConfig) -> None:
    summary = run_retrieve(cfg)
    if cfg.show:
        print(format_examples(read_retrieved(cfg.output_dir).to_pylist()[: cfg.show]))
    print(f"{summary['with_passages']} of {summary['records']} queries retrieved, {summary['without_passages']} "
          f"matched no passage, {summary['error_rows']} error rows ({cfg.output_dir}/errors.jsonl); outputs in "
          f"{cfg.output_dir}")
    check_complete("retrieve", summary)


if __name__ == "__main__":
    sys.exit(run(RetrieveConfig, main))
