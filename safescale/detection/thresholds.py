"""Operating-point selection: the threshold that reaches a target recall.

Policy (validation only, then frozen): flag a record when its risk score is ``>= τ``;
``τ`` is the largest threshold whose recall of unsafe validation records is at least
the target, i.e. the ``k``-th largest unsafe score with ``k = ceil(target · n_unsafe)``.
Ties at ``τ`` are all flagged, so the achieved validation recall is ``>= target``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["pick_threshold", "recall_at"]


def pick_threshold(scores: np.ndarray, unsafe: np.ndarray, target_recall: float = 0.95) -> float:
    """Largest ``τ`` with recall(scores ≥ τ) ≥ ``target_recall`` on these records.

    Args:
        scores: ``[n]`` risk scores (higher = riskier).
        unsafe: ``[n]`` booleans, True for unsafe records.
        target_recall: in (0, 1].

    Raises:
        ValueError: when there is no unsafe record or the target is out of range.
    """
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    scores = np.asarray(scores, dtype=np.float64)
    unsafe = np.asarray(unsafe, dtype=bool)
    if scores.shape != unsafe.shape:
        raise ValueError("scores and labels differ in length")
    positives = np.sort(scores[unsafe])[::-1]
    if positives.size == 0:
        raise ValueError("cannot pick a recall threshold: no unsafe record in the split")
    k = max(1, math.ceil(target_recall * positives.size - 1e-9))
    return float(positives[k - 1])


def recall_at(scores: np.ndarray, unsafe: np.ndarray, threshold: float) -> float:
    """Recall of unsafe records flagged by ``scores >= threshold``."""
    unsafe = np.asarray(unsafe, dtype=bool)
    flagged = np.asarray(scores) >= threshold
    return float(flagged[unsafe].mean())
