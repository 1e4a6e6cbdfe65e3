"""Shared detector bases: a scalar unsupervised score and a linear probe."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from safescale.detection.registry import (
    SAFE,
    Detector,
    columns_or_unavailable,
    vector_column_or_unavailable,
)

if TYPE_CHECKING:
    import torch

__all__ = ["LinearProbeDetector", "ScalarScoreDetector", "scored_positions"]


def scored_positions(
    response_ids: torch.Tensor, *, include_eos: bool = True, eos_token_id: int | None = None
) -> slice:
    """The response positions a sequence-level baseline scores.

    The end-of-sequence choice, one for every sequence-level baseline (``msp_seq``,
    ``nll_mean``, ``msp_step``, ``mte``): every token of the teacher-forced response is
    scored, a final EOS token included when the response ends in one — as LM-Polygraph
    scores a generated sequence. ``include_eos=False`` leaves a final
    ``eos_token_id`` out. safescale's own records carry no EOS (the answer is
    teacher-forced from its text, tokenized without special tokens, and
    :meth:`~safescale.models.backend.LanguageModel.generate` drops EOS), so for them the
    two settings agree; to reproduce LM-Polygraph on an output that stopped at EOS,
    teacher-force the response ids with the EOS id appended.

    Args:
        response_ids: ``[R]`` the response token ids.
        include_eos: score a final EOS token.
        eos_token_id: the EOS id; required when ``include_eos`` is False.

    Returns:
        A slice over the ``R`` positions.
    """
    if include_eos:
        return slice(None)
    if eos_token_id is None:
        raise ValueError("include_eos=False needs the eos_token_id")
    ends_in_eos = response_ids.numel() > 1 and int(response_ids[-1]) == eos_token_id
    return slice(0, -1) if ends_in_eos else slice(None)


class ScalarScoreDetector(Detector):
    """An unsupervised detector whose risk score is ``sign · frame[column]``.

    ``fit`` learns nothing (it only records the input width); the operating threshold
    is chosen on validation by the caller like every other detector's.
    """

    column: ClassVar[str] = ""
    sign: ClassVar[float] = 1.0

    def design_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        return columns_or_unavailable(frame, [self.column], self.name)

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> ScalarScoreDetector:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != 1:
            raise ValueError(f"{self.name} expects one feature column, got shape {X.shape}")
        self.n_features_in_ = 1
        return self

    def risk_score(self, X: np.ndarray) -> np.ndarray:
        return self.sign * np.asarray(X, dtype=np.float64)[:, 0]

    def _get_state(self, directory: Path) -> dict[str, Any]:
        return {"column": self.column, "sign": self.sign}

    def _set_state(self, state: dict[str, Any], directory: Path) -> None:
        self.n_features_in_ = 1


class LinearProbeDetector(ClassifierMixin, Detector):
    """Standardize, then class-balanced L2 logistic regression on a vector column.

    Risk score: ``σ(((x − μ) / s) · w + b)`` = P(unsafe). A binary scikit-learn
    classifier: ``y`` may hold triage classes (any class other than 0 counts as
    unsafe), ``classes_`` is ``[0, 1]`` (safe, unsafe), ``predict`` flags unsafe when
    P(unsafe) ≥ 0.5 and ``score`` is the accuracy of that flag against ``y != 0``.
    Fitted attributes: ``mean_``, ``scale_``, ``coef_``, ``intercept_``, ``classes_``,
    ``n_features_in_`` (saved as JSON). NaN or infinite inputs are a ValueError.
    """

    supervised = True
    column: ClassVar[str] = ""

    def __init__(self, C: float = 0.1, max_iter: int = 2000, random_state: int = 0) -> None:
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def design_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        return vector_column_or_unavailable(frame, self.column, self.name)

    def fit(self, X: np.ndarray, y: np.ndarray) -> LinearProbeDetector:
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        unsafe = (np.asarray(y) != SAFE).astype(int)
        if unsafe.min() == unsafe.max():
            raise ValueError(
                f"{self.name}: training needs both safe and unsafe records (got one class)"
            )
        scaler = StandardScaler().fit(X)
        model = LogisticRegression(
            C=self.C,
            class_weight="balanced",
            max_iter=self.max_iter,
            random_state=self.random_state,
        ).fit(scaler.transform(X), unsafe)
        self.mean_ = scaler.mean_
        self.scale_ = scaler.scale_
        self.coef_ = model.coef_[0]
        self.intercept_ = float(model.intercept_[0])
        self.n_iter_ = model.n_iter_
        self.classes_ = np.array([SAFE, 1])
        return self

    def risk_score(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        z = ((X - self.mean_) / self.scale_) @ self.coef_
        return 1.0 / (1.0 + np.exp(-(z + self.intercept_)))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``[n, 2]`` (safe, unsafe) probabilities."""
        p = self.risk_score(X)
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """1 (unsafe) where P(unsafe) ≥ 0.5, else 0 (safe)."""
        return (self.risk_score(X) >= 0.5).astype(int)

    def score(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
        """Accuracy of the unsafe flag against ``y != 0``."""
        unsafe = (np.asarray(y) != SAFE).astype(int)
        return float(accuracy_score(unsafe, self.predict(X), sample_weight=sample_weight))

    def _get_state(self, directory: Path) -> dict[str, Any]:
        return {
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_,
        }

    def _set_state(self, state: dict[str, Any], directory: Path) -> None:
        self.mean_ = np.asarray(state["mean"])
        self.scale_ = np.asarray(state["scale"])
        self.coef_ = np.asarray(state["coef"])
        self.intercept_ = float(state["intercept"])
        self.n_features_in_ = len(self.coef_)
        self.classes_ = np.array([SAFE, 1])
