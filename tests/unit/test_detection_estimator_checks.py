"""Trainable detectors honour the scikit-learn estimator contract.

Every trainable detector class runs scikit-learn's own estimator checks. The checks
that cannot apply are listed with the reason; they are strict expected failures, so a
check that starts passing must be taken off the list. Below them, the contract points
users relied on are tested directly on triage-labelled data.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import StratifiedKFold, check_cv, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from safescale.detection.baselines import HiddenStateProbe, LookbackLens
from safescale.detection.baselines._base import LinearProbeDetector
from safescale.detection.ecrt import ECRT, ECRTSingleStage
from safescale.detection.triage import SingleStageTriage, TwoStageTriage

FAST = {"n_estimators": 10}  # the checks fit many times; the contract does not need 160 trees
ESTIMATORS = [
    TwoStageTriage(**FAST),
    SingleStageTriage(**FAST),
    ECRT(**FAST),
    ECRTSingleStage(**FAST),
    HiddenStateProbe(),
    LookbackLens(),
]

NO_SAFE_CLASS = (
    "y are triage classes (0 = safe); the check's labels have no 0, so there is no safe "
    "record to train on"
)
TRIAGE_LABELS = "the check uses labels other than the triage classes 0 (safe), 1 (gap), 2"
ONE_CLASS_MESSAGE = (
    "the check's y is a single class; the detector's one-class error is accurate but not "
    "in the check's list of message patterns"
)
_COMMON = {
    "check_estimators_dtypes": NO_SAFE_CLASS,
    "check_classifier_data_not_an_array": NO_SAFE_CLASS,
    "check_classifiers_classes": TRIAGE_LABELS,
    "check_fit2d_1feature": ONE_CLASS_MESSAGE,
}
_TRIAGE = {
    **_COMMON,
    "check_dtype_object": TRIAGE_LABELS,
    "check_classifiers_train": (
        "classes_ is always the three triage classes, so predict_proba has three columns "
        "on the check's two-class data"
    ),
}
NEEDS_THREE = (
    "the single-stage ablation is a 3-class model and needs safe, gap and conflict "
    "records; the check's data has two classes"
)
_SINGLE_STAGE = {
    **_TRIAGE,
    **{
        name: NEEDS_THREE
        for name in (
            "check_pipeline_consistency",
            "check_estimators_pickle",
            "check_classifiers_train",
            "check_fit2d_1sample",
            "check_fit_idempotent",
            "check_fit_check_is_fitted",
            "check_n_features_in",
        )
    },
}
_PROBE = {
    **_COMMON,
    "check_classifiers_train": (
        "a binary safe/unsafe detector: on the check's 3-class data classes 1 and 2 are "
        "both 'unsafe', so 3-class accuracy cannot reach the check's bar"
    ),
}


def expected_failed_checks(estimator: object) -> dict[str, str]:
    """The checks that cannot apply to ``estimator``, with the reason."""
    if isinstance(estimator, SingleStageTriage):
        return _SINGLE_STAGE
    if isinstance(estimator, TwoStageTriage):
        return _TRIAGE
    if isinstance(estimator, LinearProbeDetector):
        return _PROBE
    raise AssertionError(f"no expected-failure list for {type(estimator).__name__}")


@parametrize_with_checks(
    ESTIMATORS, expected_failed_checks=expected_failed_checks, xfail_strict=True
)
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


# ----------------------------------------------------------------- the contract, directly


def triage_data(n: int = 90, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = rng.standard_normal((n, d)) + 1.5 * np.eye(3, d)[y]
    return X, y


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_predicting_before_fit_is_not_fitted_error(estimator) -> None:
    X, _ = triage_data()
    fresh = type(estimator)(**estimator.get_params())
    for method in ("predict", "predict_proba", "risk_score"):
        with pytest.raises(NotFittedError):
            getattr(fresh, method)(X)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_feature_count_is_checked_at_prediction(estimator) -> None:
    X, y = triage_data()
    fitted = type(estimator)(**estimator.get_params()).fit(X, y)
    assert fitted.n_features_in_ == 5
    with pytest.raises(ValueError, match="5 features"):
        fitted.predict_proba(X[:, :4])


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_infinite_input_is_a_clear_value_error(estimator) -> None:
    X, y = triage_data()
    bad = X.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        type(estimator)(**estimator.get_params()).fit(bad, y)
    fitted = type(estimator)(**estimator.get_params()).fit(X, y)
    with pytest.raises(ValueError, match="Input X contains infinity"):
        fitted.risk_score(bad)


def test_nan_is_missing_for_xgboost_but_an_error_for_probes() -> None:
    X, y = triage_data()
    holes = X.copy()
    holes[::7, 2] = np.nan
    proba = TwoStageTriage(**FAST).fit(holes, y).predict_proba(holes)
    assert np.isfinite(proba).all()
    with pytest.raises(ValueError, match="Input X contains NaN"):
        HiddenStateProbe().fit(holes, y)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_cross_val_score_without_scoring_stratifies(estimator) -> None:
    X, y = triage_data()
    assert isinstance(check_cv(3, y, classifier=True), StratifiedKFold)
    scores = cross_val_score(type(estimator)(**estimator.get_params()), X, y, cv=3)
    assert scores.shape == (3,)
    assert (scores > 0.5).all()  # well above chance on separable data


def test_probe_accuracy_counts_both_unsafe_subtypes_as_unsafe() -> None:
    X, y = triage_data()
    probe = HiddenStateProbe().fit(X, y)
    assert list(probe.classes_) == [0, 1]
    predicted = probe.predict(X)
    assert probe.score(X, y) == pytest.approx(np.mean(predicted == (y != 0)))


@pytest.mark.parametrize("probe", [HiddenStateProbe(), LookbackLens()], ids=lambda e: e.name)
def test_pipeline_ending_in_a_probe_predicts(probe) -> None:
    X, y = triage_data()
    pipeline = make_pipeline(StandardScaler(), probe).fit(X, y)
    flags = pipeline.predict(X)
    assert set(np.unique(flags)) == {0, 1}
    np.testing.assert_array_equal(flags, (pipeline.predict_proba(X)[:, 1] >= 0.5).astype(int))
