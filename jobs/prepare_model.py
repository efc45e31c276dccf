"""Write the packaged SmolLM2-135M-Instruct as a local model: ``python -m jobs.prepare_model``."""

import sys

from jobs._door import run
from rac.models.prepare import PrepareModelConfig, prepare_model


def main(cfg: PrepareModelConfig) -> None:
    print(f"model ready in {prepare_model(cfg)}")


if __name__ == "__main__":
    sys.exit(run(PrepareModelConfig, main, use_ray=False))
