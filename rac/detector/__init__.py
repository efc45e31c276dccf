"""The unsupported-span detector: a token classifier learned from the negatives' provenance."""

from rac.detector.config import DetectorConfig
from rac.detector.model import DetectorDirError, DetectorResult, UnsupportedSpanDetector, check_detector_dir
from rac.failures import StageResult

__all__ = ["DetectorConfig", "DetectorDirError", "DetectorResult", "UnsupportedSpanDetector", "check_detector_dir",
           "run_train_detector"]


def run_train_detector(cfg: DetectorConfig) -> StageResult:
    """Train, export and validate the detector (:func:`rac.detector.train.run_train_detector`)."""
    from rac.detector.train import run_train_detector as run

    return run(cfg)
