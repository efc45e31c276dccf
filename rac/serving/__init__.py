"""Serving: the config, request handling and batched generation behind ``serve/app.py``.

Nothing here imports Ray; the FastAPI app is in :mod:`rac.serving.http` (imported on use).
"""

from rac.serving.auth import APIKeyChecker, load_api_key, presented_key
from rac.serving.config import (
    AuthConfig,
    AutoscalingSection,
    DeploymentSection,
    GeneratorConfig,
    IngressConfig,
    LimitsConfig,
    ServeConfig,
)
from rac.serving.generator import BatchStats, QuestionGenerator, question_from_text
from rac.serving.service import ClarifyService, ServingError

__all__ = [
    "APIKeyChecker", "AuthConfig", "AutoscalingSection", "BatchStats", "ClarifyService", "DeploymentSection",
    "GeneratorConfig", "IngressConfig", "LimitsConfig", "QuestionGenerator", "ServeConfig", "ServingError",
    "load_api_key", "presented_key", "question_from_text",
]
