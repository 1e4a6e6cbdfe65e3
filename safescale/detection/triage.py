"""Two-stage triage (ECRT) and its single-stage ablation, as scikit-learn estimators.

Stage 1 is an XGBoost classifier (160 trees, class-balanced sample weights) for
unsafe vs safe, giving ``p1 = P(unsafe)``. Stage 2 is trained on the *ground-truth
unsafe* training records only, giving ``p2 = P(gap | unsafe)``. Composition::

    P(safe) = 1 − p1,   P(gap) = p1 · p2,   P(conflict) = p1 · (1 − p2)

which sums to one by construction. The single-stage ablation fits one 3-class
XGBoost (same features, same hyperparameters, class-balanced) and reads
``P(unsafe) = P(gap) + P(conflict)``.

Both take triage classes ``y`` in {0 safe, 1 gap, 2 conflict} and expose ``fit``,
``predict_proba`` (columns safe, gap, conflict), ``predict``, ``score`` (3-class
accuracy, scikit-learn's classifier default), ``risk_score`` (``P(unsafe)``, higher =
riskier) and ``get_params``; fitted boosters are saved as XGBoost JSON. They are
scikit-learn classifiers (``ClassifierMixin`` tags: ``cross_val_score`` works without
``scoring=`` and an integer ``cv`` stratifies), raise ``NotFittedError`` before ``fit``,
check the feature count at prediction, and reject infinite values with a ValueError
(NaN is allowed: XGBoost treats it as a missing value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from xgboost import XGBClassifier

from safescale.detection.registry import CONFLICT, GAP, SAFE, Detector

__all__ = ["SingleStageTriage", "TwoStageTriage", "compose_stages"]


def compose_stages(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """``[n, 3]`` (safe, gap, conflict) probabilities from Stage-1 and Stage-2 outputs."""
    p1 = np.asarray(p1, dtype=np.float64)
    p2 = np.asarray(p2, dtype=np.float64)
    return np.stack([1.0 - p1, p1 * p2, p1 * (1.0 - p2)], axis=1)


class _XGBoostTriage(ClassifierMixin, Detector):
    def __init__(
        self,
        n_estimators: int = 160,
        max_depth: int = 4,
        learning_rate: float = 0.1,
        subsample: float = 1.0,
        colsample_bytree: float = 1.0,
        random_state: int = 0,
        n_jobs: int = 1,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _booster(self, **extra: Any) -> XGBClassifier:
        return XGBClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
            tree_method="hist",
            **extra,
        )

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # XGBoost's missing value
        return tags

    def _validate_fit(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        labels = np.asarray(y)
        if labels.dtype.kind not in "iuf" or not np.isin(labels, [SAFE, GAP, CONFLICT]).all():
            raise ValueError("y must hold triage classes 0 (safe), 1 (gap), 2 (conflict)")
        return X, labels.astype(int)

    def _validate_predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite="allow-nan")

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable triage class per row."""
        return self.predict_proba(X).argmax(axis=1)

    def risk_score(self, X: np.ndarray) -> np.ndarray:
        """``P(unsafe) = P(gap) + P(conflict)``; higher = riskier."""
        proba = self.predict_proba(X)
        return proba[:, 1] + proba[:, 2]

    def gap_given_unsafe(self, X: np.ndarray) -> np.ndarray:
        """``P(gap | unsafe)`` per row (the Stage-2 output)."""
        proba = self.predict_proba(X)
        unsafe = proba[:, 1] + proba[:, 2]
        return np.divide(proba[:, 1], unsafe, out=np.full(len(proba), 0.5), where=unsafe > 0)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class TwoStageTriage(_XGBoostTriage):
    """ECRT two-stage triage head (see the module docstring).

    Fitted attributes: ``stage1_`` and ``stage2_`` (``XGBClassifier``; ``stage2_`` is
    None when the unsafe training records hold a single subtype, then
    ``stage2_unavailable_`` says why and ``p2`` is that subtype's share, 0 or 1),
    ``classes_``, ``n_features_in_``.
    """

    attributes_subtype = True

    def fit(self, X: np.ndarray, y: np.ndarray) -> TwoStageTriage:
        X, y = self._validate_fit(X, y)
        unsafe = (y != SAFE).astype(int)
        if unsafe.min() == unsafe.max():
            raise ValueError(
                "stage 1 needs both safe and unsafe records in training (got one class)"
            )
        self.stage1_ = self._booster(objective="binary:logistic")
        self.stage1_.fit(X, unsafe, sample_weight=compute_sample_weight("balanced", unsafe))
        Xu, gap = X[unsafe == 1], (y[unsafe == 1] == GAP).astype(int)
        self.stage2_unavailable_: str | None = None
        if gap.min() == gap.max():
            only = "gap" if gap[0] else "conflict"
            self.stage2_ = None
            self.stage2_prior_ = float(gap[0])
            self.stage2_unavailable_ = (
                f"stage 2 not trained: every unsafe training record is {only}"
            )
        else:
            self.stage2_ = self._booster(objective="binary:logistic")
            self.stage2_.fit(Xu, gap, sample_weight=compute_sample_weight("balanced", gap))
            self.stage2_prior_ = float(gap.mean())
        self.classes_ = np.array([SAFE, GAP, CONFLICT])
        self.n_features_in_ = X.shape[1]
        return self

    def stage_probabilities(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(p1, p2)``: P(unsafe) from Stage 1 and P(gap | unsafe) from Stage 2."""
        X = self._validate_predict(X)
        p1 = self.stage1_.predict_proba(X)[:, 1]
        if self.stage2_ is None:
            p2 = np.full(len(X), self.stage2_prior_)
        else:
            p2 = self.stage2_.predict_proba(X)[:, 1]
        return p1, p2

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``[n, 3]`` (safe, gap, conflict) composed probabilities."""
        return compose_stages(*self.stage_probabilities(X))

    def risk_score(self, X: np.ndarray) -> np.ndarray:
        return self.stage_probabilities(X)[0]

    def gap_given_unsafe(self, X: np.ndarray) -> np.ndarray:
        return self.stage_probabilities(X)[1]

    def _get_state(self, directory: Path) -> dict[str, Any]:
        self.stage1_.save_model(str(directory / "stage1.json"))
        if self.stage2_ is not None:
            self.stage2_.save_model(str(directory / "stage2.json"))
        return {
            "n_features_in": int(self.n_features_in_),
            "stage2_prior": self.stage2_prior_,
            "stage2_unavailable": self.stage2_unavailable_,
            "stage1_file": "stage1.json",
            "stage2_file": None if self.stage2_ is None else "stage2.json",
        }

    def _set_state(self, state: dict[str, Any], directory: Path) -> None:
        self.stage1_ = XGBClassifier()
        self.stage1_.load_model(str(directory / state["stage1_file"]))
        self.stage2_ = None
        if state["stage2_file"]:
            self.stage2_ = XGBClassifier()
            self.stage2_.load_model(str(directory / state["stage2_file"]))
        self.stage2_prior_ = state["stage2_prior"]
        self.stage2_unavailable_ = state["stage2_unavailable"]
        self.n_features_in_ = state["n_features_in"]
        self.classes_ = np.array([SAFE, GAP, CONFLICT])


class SingleStageTriage(_XGBoostTriage):
    """Single-stage ablation: one class-balanced 3-class XGBoost on the same features.

    Fitted attributes: ``model_`` (``XGBClassifier``), ``classes_``, ``n_features_in_``.
    """

    attributes_subtype = True

    def fit(self, X: np.ndarray, y: np.ndarray) -> SingleStageTriage:
        X, y = self._validate_fit(X, y)
        missing = sorted({SAFE, GAP, CONFLICT} - set(y.tolist()))
        if missing:
            names = {SAFE: "safe", GAP: "gap", CONFLICT: "conflict"}
            raise ValueError(
                f"the single-stage ablation needs all three classes in training; missing "
                f"{[names[m] for m in missing]}"
            )
        self.model_ = self._booster(objective="multi:softprob")
        self.model_.fit(X, y, sample_weight=compute_sample_weight("balanced", y))
        self.classes_ = np.array([SAFE, GAP, CONFLICT])
        self.n_features_in_ = X.shape[1]
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``[n, 3]`` (safe, gap, conflict) probabilities."""
        X = self._validate_predict(X)
        return self.model_.predict_proba(X).astype(np.float64)

    def _get_state(self, directory: Path) -> dict[str, Any]:
        self.model_.save_model(str(directory / "model.json"))
        return {"n_features_in": int(self.n_features_in_), "model_file": "model.json"}

    def _set_state(self, state: dict[str, Any], directory: Path) -> None:
        self.model_ = XGBClassifier()
        self.model_.load_model(str(directory / state["model_file"]))
        self.n_features_in_ = state["n_features_in"]
        self.classes_ = np.array([SAFE, GAP, CONFLICT])
