"""Detection: evidence-calibrated softmax, ECRT two-stage triage, baselines, masking.

Every detector is registered by name (``@detector("name")``) and scores records so that
higher = riskier. :func:`run_detection` is the entry point; :func:`calibration_report`
and :func:`mask_evidence_span` are the calibration and causal diagnostics.
"""

from __future__ import annotations

from safescale.detection import baselines
from safescale.detection.calibration import (
    CalibrationMetrics,
    CalibrationReport,
    GradeWeights,
    brier_score,
    calibrated_softmax,
    calibration_report,
    expected_calibration_error,
    supporting_level,
)
from safescale.detection.ecrt import ECRT, ECRTSingleStage
from safescale.detection.ecrt_features import (
    deviation_features,
    discrepancy_features,
    ecrt_features,
    incoherence_features,
)
from safescale.detection.extraction import (
    ExtractionPlan,
    FeatureCache,
    extract_features,
    teacher_forced_pair,
)
from safescale.detection.labels import triage_class, triage_classes
from safescale.detection.masking import MaskingResult, find_token_span, mask_evidence_span
from safescale.detection.metrics import Stage1Metrics, Stage2Metrics, stage1_metrics, stage2_metrics
from safescale.detection.pipeline import (
    DEFAULT_DETECTORS,
    DetectionConfig,
    TriageReport,
    TriageRow,
    comparison_table,
    evaluate_detection,
    label_and_split,
    run_detection,
)
from safescale.detection.registry import (
    CONFLICT,
    GAP,
    SAFE,
    Detector,
    DetectorUnavailable,
    available_detectors,
    detector,
    get_detector,
)
from safescale.detection.thresholds import pick_threshold, recall_at
from safescale.detection.triage import SingleStageTriage, TwoStageTriage, compose_stages

__all__ = [
    "CONFLICT",
    "DEFAULT_DETECTORS",
    "ECRT",
    "GAP",
    "SAFE",
    "CalibrationMetrics",
    "CalibrationReport",
    "DetectionConfig",
    "Detector",
    "DetectorUnavailable",
    "ECRTSingleStage",
    "ExtractionPlan",
    "FeatureCache",
    "GradeWeights",
    "MaskingResult",
    "SingleStageTriage",
    "Stage1Metrics",
    "Stage2Metrics",
    "TriageReport",
    "TriageRow",
    "TwoStageTriage",
    "available_detectors",
    "baselines",
    "brier_score",
    "calibrated_softmax",
    "calibration_report",
    "comparison_table",
    "compose_stages",
    "detector",
    "deviation_features",
    "discrepancy_features",
    "ecrt_features",
    "evaluate_detection",
    "expected_calibration_error",
    "extract_features",
    "find_token_span",
    "get_detector",
    "incoherence_features",
    "label_and_split",
    "mask_evidence_span",
    "pick_threshold",
    "recall_at",
    "run_detection",
    "stage1_metrics",
    "stage2_metrics",
    "supporting_level",
    "teacher_forced_pair",
    "triage_class",
    "triage_classes",
]
