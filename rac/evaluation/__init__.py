"""Evaluation (step 5): reference metrics, faithfulness, significance and the report.

``parent_grounding`` is imported by the serving app: keep this package's import light
(no torch, no Ray at import time).
"""

from rac.evaluation.config import EvaluateConfig, SystemConfig
from rac.evaluation.grounding import parent_grounding
from rac.evaluation.stage import run_evaluate

__all__ = ["EvaluateConfig", "SystemConfig", "parent_grounding", "run_evaluate"]
