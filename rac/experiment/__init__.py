"""The study runner: RAC variants against the baselines, selected on validation, tested once."""

from rac.experiment.config import ExperimentConfig, Variant
from rac.experiment.runner import run_study
from rac.experiment.study import read_events

__all__ = ["ExperimentConfig", "Variant", "read_events", "run_study"]
