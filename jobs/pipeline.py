"""The main job: ``python -m jobs.pipeline --config configs/demo.yaml [--from STAGE]``."""

import sys
from pathlib import Path

from jobs._door import pop_option, run
from rac.config import ConfigError
from rac.pipeline import PipelineConfig, run_pipeline, summary_text
from rac.plan import pipeline_preflight as preflight


def main(cfg: PipelineConfig, start_from: str | None) -> None:
    manifests = run_pipeline(cfg, start_from=start_from)
    print(summary_text(cfg, manifests))
    print(f"\nrun directory: {Path(cfg.run_dir).resolve()}")


if __name__ == "__main__":
    try:  # not a config key: which stage to re-run from
        argv, start_from = pop_option(sys.argv[1:], "--from", "a stage name")
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(PipelineConfig, lambda cfg: main(cfg, start_from), argv=argv, preflight=preflight))
