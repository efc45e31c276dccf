"""The main job: ``python -m jobs.pipeline --config configs/demo.yaml``."""

import sys

from jobs._door import run
from rac.pipeline import PipelineConfig, run_pipeline
from rac.retrieval import format_examples, read_retrieved


def main(cfg: PipelineConfig) -> None:
    summaries = run_pipeline(cfg)
    for stage, summary in summaries.items():
        print(f"{stage}: {summary}")
    if "retrieve" in summaries and cfg.show:
        rows = read_retrieved(cfg.stage_configs()["retrieve"].output_dir).to_pylist()
        print("\nqueries and the passages retrieved for them:\n")
        print(format_examples(rows[:: max(1, len(rows) // cfg.show)][: cfg.show]))


if __name__ == "__main__":
    sys.exit(run(PipelineConfig, main))
