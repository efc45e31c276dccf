"""The memory plan of a pipeline, before any work:
``python -m jobs.plan --config configs/llama-3.1-8b.yaml [--serve cluster/rayservice.yaml] [--key value ...]``.

Prints each GPU stage's estimated memory per GPU as a Markdown table; exit 2 when a stage does
not fit, with the settings that would make it fit.
"""

import sys

from jobs._door import pop_option, run
from rac.config import ConfigError
from rac.models.memory import plan_table
from rac.pipeline import PipelineConfig
from rac.plan import pipeline_plans, serve_config


def main(cfg: PipelineConfig, serve: str | None) -> None:
    try:
        plans = pipeline_plans(cfg, serve_config(serve) if serve else None)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(plan_table(plans))
    refused = [p for p in plans if not p.fits]
    for plan in refused:
        print(f"\nconfig error: {plan.refusal('gpu_memory_gb of its resources')}", file=sys.stderr)
    if refused:
        raise SystemExit(2)


if __name__ == "__main__":
    try:  # not a config key: the Serve config (or RayService manifest) whose generator to plan too
        argv, serve = pop_option(sys.argv[1:], "--serve", "a Serve config or RayService manifest")
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(PipelineConfig, lambda cfg: main(cfg, serve), argv=argv, use_ray=False))
