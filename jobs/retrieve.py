"""Retrieve passages for every query: ``python -m jobs.retrieve --config configs/retrieve.yaml``."""

import sys

from jobs._door import run
from rac.retrieval import RetrieveConfig, format_examples, read_retrieved, run_retrieve


def main(cfg: RetrieveConfig) -> None:
    result = run_retrieve(cfg)
    if cfg.show:
        print(format_examples(read_retrieved(cfg.output_dir).to_pylist()[: cfg.show]))
    d = result.details
    print(f"{d['with_passages']} of {d['records']} queries retrieved, {d['without_passages']} matched no passage, "
          f"{d['error_rows']} error rows ({cfg.output_dir}/errors.jsonl); outputs in {cfg.output_dir}")
    result.check_complete()


if __name__ == "__main__":
    sys.exit(run(RetrieveConfig, main))
