"""Triage metrics (Stage 1: safe vs unsafe; Stage 2: gap vs conflict on unsafe cases).

Stage 1, with ``flag = score >= τ`` and ``unsafe`` the ground truth:

* U-recall = |flag ∧ unsafe| / |unsafe|;
* flag rate = |flag| / N (review burden);
* S1 BA = ½ (U-recall + |¬flag ∧ ¬unsafe| / |¬unsafe|);
* AUROC of the score for unsafe (threshold-free; NaN when a class is missing).

Stage 2, over ground-truth unsafe records, with ``pred_gap`` the predicted subtype:
gap recall, contradiction recall and S2 BA = their mean.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict
from sklearn.metrics import roc_auc_score

from safescale.detection.registry import CONFLICT, GAP

__all__ = ["Stage1Metrics", "Stage2Metrics", "stage1_metrics", "stage2_metrics"]


class Stage1Metrics(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int
    n_unsafe: int
    u_recall: float
    flag_rate: float
    s1_ba: float
    auroc: float


class Stage2Metrics(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_gap: int
    n_conflict: int
    gap_recall: float
    contradiction_recall: float
    s2_ba: float


def _safe_mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else float("nan")


def stage1_metrics(scores: np.ndarray, unsafe: np.ndarray, threshold: float) -> Stage1Metrics:
    """Stage-1 metrics at a frozen threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    unsafe = np.asarray(unsafe, dtype=bool)
    flag = scores >= threshold
    recall = _safe_mean(flag[unsafe])
    specificity = _safe_mean(~flag[~unsafe])
    auroc = float(roc_auc_score(unsafe, scores)) if 0 < unsafe.sum() < unsafe.size else float("nan")
    return Stage1Metrics(
        n=int(unsafe.size),
        n_unsafe=int(unsafe.sum()),
        u_recall=recall,
        flag_rate=_safe_mean(flag),
        s1_ba=0.5 * (recall + specificity),
        auroc=auroc,
    )


def stage2_metrics(classes: np.ndarray, pred_gap: np.ndarray) -> Stage2Metrics:
    """Stage-2 metrics over ground-truth unsafe records (``classes`` in {GAP, CONFLICT})."""
    classes = np.asarray(classes)
    pred_gap = np.asarray(pred_gap, dtype=bool)
    unsafe = classes != 0
    classes, pred_gap = classes[unsafe], pred_gap[unsafe]
    gap_recall = _safe_mean(pred_gap[classes == GAP])
    con_recall = _safe_mean(~pred_gap[classes == CONFLICT])
    return Stage2Metrics(
        n_gap=int((classes == GAP).sum()),
        n_conflict=int((classes == CONFLICT).sum()),
        gap_recall=gap_recall,
        contradiction_recall=con_recall,
        s2_ba=0.5 * (gap_recall + con_recall),
    )
