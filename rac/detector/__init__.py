"""The unsupported-span detector: a token classifier learned from the negatives' provenance.

The package holds the detector itself (labels, model, inference), which the evaluation scores
with. Its training stage, :func:`rac.detector.train.run_train_detector`, measures the detector
against the evaluation's scores and so sits above :mod:`rac.evaluation`: import it from there.
"""

from rac.detector.config import DetectorConfig
from rac.detector.model import DetectorDirError, DetectorResult, UnsupportedSpanDetector, check_detector_dir

__all__ = ["DetectorConfig", "DetectorDirError", "DetectorResult", "UnsupportedSpanDetector", "check_detector_dir"]
