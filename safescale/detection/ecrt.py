"""ECRT detectors: the two-stage triage and its single-stage ablation on ECRT features.

Both read every ``ecrt.*`` column of the features frame (the discrepancy, deviation
and incoherence families of :mod:`safescale.detection.ecrt_features`) and require the
paired CTX and NOCTX passes — exactly two teacher-forced passes per record.
Risk score: ``P(unsafe)`` (higher = riskier).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from safescale.detection.registry import DetectorUnavailable, columns_or_unavailable, detector
from safescale.detection.triage import SingleStageTriage, TwoStageTriage

__all__ = ["ECRT", "ECRT_PREFIX", "ECRTSingleStage", "ecrt_columns"]

ECRT_PREFIX = "ecrt."


def ecrt_columns(frame: pd.DataFrame) -> list[str]:
    """The ECRT feature columns of a features frame, in frame order."""
    return [c for c in frame.columns if c.startswith(ECRT_PREFIX)]


def _ecrt_matrix(frame: pd.DataFrame, who: str) -> np.ndarray:
    columns = ecrt_columns(frame)
    if not columns:
        raise DetectorUnavailable(f"{who}: no ECRT features were extracted for this run")
    return columns_or_unavailable(frame, columns, who)


@detector("ecrt")
class ECRT(TwoStageTriage):
    """ECRT: two-stage XGBoost triage on CTX/NOCTX internal-signal features."""

    requires = frozenset({"ctx_pass", "noctx_pass"})
    supervised = True

    def design_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        return _ecrt_matrix(frame, self.name)


@detector("ecrt_1stage")
class ECRTSingleStage(SingleStageTriage):
    """Single-stage white-box ablation: one 3-class XGBoost on the ECRT features."""

    requires = frozenset({"ctx_pass", "noctx_pass"})
    supervised = True

    def design_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        return _ecrt_matrix(frame, self.name)
