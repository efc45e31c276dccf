"""Evaluate trained systems and the mixture samples: ``python -m jobs.evaluate --config configs/evaluate.yaml``."""

import sys

from jobs._door import run
from rac.evaluation import EvaluateConfig, run_evaluate
from rac.evaluation.memory import check_memory as preflight


def main(cfg: EvaluateConfig) -> None:
    result = run_evaluate(cfg)
    summary = result.details
    for name, counts in summary["systems"].items():
        print(f"{name}: {counts['evaluated']} of {result.rows_in} test rows evaluated, "
              f"{counts['error_rows']} error rows")
    if summary["mixture_rows"]:
        print(f"{summary['mixture_rows']} mixture rows scored over alphas {[a for a, _ in cfg.alpha_dirs()]}")
    print(f"report: {summary['report_md']} (every figure in {summary['report_json']}); errors in "
          f"{cfg.output_dir}/errors.jsonl")


if __name__ == "__main__":
    sys.exit(run(EvaluateConfig, main, preflight=preflight))
