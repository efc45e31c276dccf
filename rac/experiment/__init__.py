"""The study runner: RAC variants against the baselines, selected on validation, tested once."""

from rac.experiment.config import ExperimentConfig, Variant
from rac.experiment.runner import read_events, run_study

__all__ = ["ExperimentConfig", "Variant", "read_events", "run_study"]
