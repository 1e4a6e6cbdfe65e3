"""Detection: evidence-calibrated softmax, ECRT two-stage triage, baselines, masking.

Every detector is registered by name (``@detector("name")``) and scores records so that
higher = riskier. :func:`run_detection` is the entry point; :func:`calibration_report`
and :func:`mask_evidence_span` are the calibration and causal diagnostics.

Importing this package is light (no torch): each name loads its module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from safescale.detection.metrics import (
        Stage1Metrics,
        Stage2Metrics,
        stage1_metrics,
        stage2_metrics,
    )
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

#: name -> the module that defines it (imported on first access).
_LAZY = {
    "CONFLICT": "safescale.detection.registry",
    "CalibrationMetrics": "safescale.detection.calibration",
    "CalibrationReport": "safescale.detection.calibration",
    "DEFAULT_DETECTORS": "safescale.detection.pipeline",
    "DetectionConfig": "safescale.detection.pipeline",
    "Detector": "safescale.detection.registry",
    "DetectorUnavailable": "safescale.detection.registry",
    "ECRT": "safescale.detection.ecrt",
    "ECRTSingleStage": "safescale.detection.ecrt",
    "ExtractionPlan": "safescale.detection.extraction",
    "FeatureCache": "safescale.detection.extraction",
    "GAP": "safescale.detection.registry",
    "GradeWeights": "safescale.detection.calibration",
    "MaskingResult": "safescale.detection.masking",
    "SAFE": "safescale.detection.registry",
    "SingleStageTriage": "safescale.detection.triage",
    "Stage1Metrics": "safescale.detection.metrics",
    "Stage2Metrics": "safescale.detection.metrics",
    "TriageReport": "safescale.detection.pipeline",
    "TriageRow": "safescale.detection.pipeline",
    "TwoStageTriage": "safescale.detection.triage",
    "available_detectors": "safescale.detection.registry",
    "baselines": "safescale.detection.baselines",
    "brier_score": "safescale.detection.calibration",
    "calibrated_softmax": "safescale.detection.calibration",
    "calibration_report": "safescale.detection.calibration",
    "comparison_table": "safescale.detection.pipeline",
    "compose_stages": "safescale.detection.triage",
    "detector": "safescale.detection.registry",
    "deviation_features": "safescale.detection.ecrt_features",
    "discrepancy_features": "safescale.detection.ecrt_features",
    "ecrt_features": "safescale.detection.ecrt_features",
    "evaluate_detection": "safescale.detection.pipeline",
    "expected_calibration_error": "safescale.detection.calibration",
    "extract_features": "safescale.detection.extraction",
    "find_token_span": "safescale.detection.masking",
    "get_detector": "safescale.detection.registry",
    "incoherence_features": "safescale.detection.ecrt_features",
    "label_and_split": "safescale.detection.pipeline",
    "mask_evidence_span": "safescale.detection.masking",
    "pick_threshold": "safescale.detection.thresholds",
    "recall_at": "safescale.detection.thresholds",
    "run_detection": "safescale.detection.pipeline",
    "stage1_metrics": "safescale.detection.metrics",
    "stage2_metrics": "safescale.detection.metrics",
    "supporting_level": "safescale.detection.calibration",
    "teacher_forced_pair": "safescale.detection.extraction",
    "triage_class": "safescale.detection.labels",
    "triage_classes": "safescale.detection.labels",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
