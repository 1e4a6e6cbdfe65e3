"""Two-stage triage, single-stage ablation, thresholds and triage metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safescale.detection import (
    CONFLICT,
    GAP,
    SAFE,
    SingleStageTriage,
    TwoStageTriage,
    compose_stages,
    pick_threshold,
    recall_at,
    stage1_metrics,
    stage2_metrics,
)


def synthetic(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Feature 0 separates safe from unsafe, feature 1 gap from conflict."""
    rng = np.random.default_rng(seed)
    y = rng.choice([SAFE, GAP, CONFLICT], size=n, p=[0.3, 0.35, 0.35])
    X = rng.normal(size=(n, 4))
    X[:, 0] += 3.0 * (y != SAFE)
    X[:, 1] += 3.0 * (y == GAP)
    return X, y


@given(
    p1=st.lists(st.floats(0, 1), min_size=1, max_size=20),
    p2=st.lists(st.floats(0, 1), min_size=1, max_size=20),
)
def test_stage_composition_sums_to_one(p1, p2):
    n = min(len(p1), len(p2))
    proba = compose_stages(np.array(p1[:n]), np.array(p2[:n]))
    assert proba.shape == (n, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert (proba >= -1e-12).all()
    np.testing.assert_allclose(proba[:, 1] + proba[:, 2], p1[:n], atol=1e-12)


def test_two_stage_learns_both_stages_and_composes(tmp_path):
    X, y = synthetic()
    model = TwoStageTriage(n_estimators=40, random_state=3).fit(X[:160], y[:160])
    assert model.get_params()["n_estimators"] == 40
    assert model.stage2_ is not None and model.stage2_unavailable_ is None
    proba = model.predict_proba(X[160:])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    p1, p2 = model.stage_probabilities(X[160:])
    np.testing.assert_allclose(proba[:, 0], 1 - p1, atol=1e-6)
    np.testing.assert_allclose(proba[:, 1], p1 * p2, atol=1e-6)
    # the signal is strong: both stages are far better than chance on held-out rows
    yt = y[160:]
    m1 = stage1_metrics(model.risk_score(X[160:]), yt != SAFE, 0.5)
    assert m1.s1_ba > 0.85
    m2 = stage2_metrics(yt, model.gap_given_unsafe(X[160:]) >= 0.5)
    assert m2.s2_ba > 0.85
    # JSON round trip reproduces the probabilities; no pickle anywhere
    model.save(tmp_path)
    for name in ("detector.json", "stage1.json", "stage2.json"):
        json.loads((tmp_path / name).read_text())
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob("*.joblib"))
    loaded = TwoStageTriage.load(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(X[160:]), proba, atol=1e-6)


def test_two_stage_with_one_subtype_says_stage2_is_unavailable():
    X, y = synthetic()
    y = np.where(y == GAP, CONFLICT, y)
    model = TwoStageTriage(n_estimators=10).fit(X, y)
    assert model.stage2_ is None
    assert "every unsafe training record is conflict" in model.stage2_unavailable_
    proba = model.predict_proba(X)
    assert (proba[:, 1] == 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)


def test_two_stage_rejects_bad_labels():
    X, y = synthetic(40)
    with pytest.raises(ValueError, match="triage classes"):
        TwoStageTriage(n_estimators=5).fit(X, y + 1)
    with pytest.raises(ValueError, match="both safe and unsafe"):
        TwoStageTriage(n_estimators=5).fit(X, np.full(len(X), GAP))


def test_single_stage_ablation(tmp_path):
    X, y = synthetic()
    model = SingleStageTriage(n_estimators=40, random_state=1).fit(X[:160], y[:160])
    proba = model.predict_proba(X[160:])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.risk_score(X[160:]), proba[:, 1] + proba[:, 2], atol=1e-9)
    assert stage1_metrics(model.risk_score(X[160:]), y[160:] != SAFE, 0.5).s1_ba > 0.85
    model.save(tmp_path)
    json.loads((tmp_path / "model.json").read_text())
    np.testing.assert_allclose(
        SingleStageTriage.load(tmp_path).predict_proba(X[160:]), proba, atol=1e-6
    )
    with pytest.raises(ValueError, match="all three classes"):
        SingleStageTriage(n_estimators=5).fit(X, np.where(y == GAP, SAFE, y))


@settings(max_examples=60)
@given(
    scores=st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=60),
    target=st.floats(0.05, 1.0),
    seed=st.integers(0, 1000),
)
def test_threshold_reaches_target_recall_and_is_the_largest(scores, target, seed):
    rng = np.random.default_rng(seed)
    scores = np.array(scores)
    unsafe = rng.random(len(scores)) < 0.5
    unsafe[0] = True
    tau = pick_threshold(scores, unsafe, target)
    assert recall_at(scores, unsafe, tau) >= target - 1e-12
    above = scores[unsafe][scores[unsafe] > tau]
    if above.size:  # any larger threshold (next unsafe score) misses the target
        assert recall_at(scores, unsafe, above.min()) < target


def test_threshold_errors():
    with pytest.raises(ValueError, match="no unsafe record"):
        pick_threshold(np.array([0.1, 0.2]), np.array([False, False]))
    with pytest.raises(ValueError, match="target_recall"):
        pick_threshold(np.array([0.1]), np.array([True]), 0.0)


def test_stage_metrics_known_values():
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.2, 0.1])
    unsafe = np.array([True, False, True, False, False, True])
    m = stage1_metrics(scores, unsafe, threshold=0.35)
    assert m.u_recall == pytest.approx(2 / 3)
    assert m.flag_rate == pytest.approx(0.5)
    assert m.s1_ba == pytest.approx(0.5 * (2 / 3 + 2 / 3))
    assert m.auroc == pytest.approx(5 / 9)
    classes = np.array([SAFE, GAP, GAP, CONFLICT, CONFLICT, CONFLICT])
    pred_gap = np.array([True, True, False, False, False, True])
    m2 = stage2_metrics(classes, pred_gap)
    assert (m2.n_gap, m2.n_conflict) == (2, 3)
    assert m2.gap_recall == pytest.approx(0.5)
    assert m2.contradiction_recall == pytest.approx(2 / 3)
    assert m2.s2_ba == pytest.approx((0.5 + 2 / 3) / 2)
