"""The main job: ``python -m jobs.pipeline --config configs/demo.yaml [--from STAGE]``."""

import sys
from pathlib import Path

from jobs._door import run
from rac.pipeline import PipelineConfig, run_pipeline, summary_text


def main(cfg: PipelineConfig, start_from: str | None) -> None:
    manifests = run_pipeline(cfg, start_from=start_from)
    print(summary_text(cfg, manifests))
    print(f"\nrun directory: {Path(cfg.run_dir).resolve()}")


if __name__ == "__main__":
    argv = sys.argv[1:]
    start_from = None
    if "--from" in argv:  # not a config key: which stage to re-run from
        i = argv.index("--from")
        if i + 1 >= len(argv):
            print("config error: --from needs a stage name", file=sys.stderr)
            sys.exit(2)
        start_from = argv[i + 1]
        argv = argv[:i] + argv[i + 2:]
    sys.exit(run(PipelineConfig, lambda cfg: main(cfg, start_from), argv=argv))
