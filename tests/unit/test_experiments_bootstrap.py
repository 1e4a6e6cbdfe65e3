"""Seeded percentile bootstrap: determinism, hand-computed values, coverage, pairing."""

from __future__ import annotations

import numpy as np
import pytest

from safescale.statistics.bootstrap import (
    Estimate,
    bootstrap_ratio,
    key_entropy,
    paired_difference,
    percentile_interval,
    replicate_counts,
)


def test_replicate_counts_rows_sum_to_units_and_are_seeded_per_replicate():
    counts = replicate_counts(7, 50, [3, 1])
    assert counts.shape == (50, 7)
    assert np.all(counts.sum(axis=1) == 7)
    # Replicate r depends only on (entropy, r): asking for more replicates keeps the first.
    longer = replicate_counts(7, 80, [3, 1])
    np.testing.assert_array_equal(longer[:50], counts)
    other = replicate_counts(7, 50, [4, 1])
    assert not np.array_equal(other, counts)


def test_key_entropy_is_stable_and_key_sensitive():
    assert key_entropy(5, "cell", "m", 1) == key_entropy(5, "cell", "m", 1)
    assert key_entropy(5, "cell", "m", 1) != key_entropy(5, "cell", "m", 4)
    assert key_entropy(5, "x")[0] == 5


def test_ratio_point_value_is_ratio_of_sums():
    # Three clusters: (successes, records) = (1, 2), (0, 1), (3, 3) -> 4 / 6.
    est = bootstrap_ratio(
        np.array([1.0, 0.0, 3.0]), np.array([2.0, 1.0, 3.0]), replicates=200, entropy=1
    )
    assert isinstance(est, Estimate)
    assert est.value == pytest.approx(4 / 6)
    assert est.n == 6 and est.n_units == 3
    assert 0.0 <= est.lo <= est.value <= est.hi <= 1.0
    assert est.lo < est.hi


def test_constant_data_gives_degenerate_interval():
    est = bootstrap_ratio(np.ones(10), np.ones(10), replicates=100, entropy=0)
    assert (est.value, est.lo, est.hi) == (1.0, 1.0, 1.0)


def test_multi_statistic_input_shares_one_resample():
    x = np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    a, b = bootstrap_ratio(x, np.ones(4), replicates=300, entropy=9)
    assert (a.lo, a.hi) == (b.lo, b.hi)


def test_percentile_interval_ignores_nan_replicates():
    stats = np.array([[np.nan, 1.0], [np.nan, 2.0], [np.nan, 3.0], [np.nan, 4.0], [np.nan, 5.0]])
    lo, hi = percentile_interval(stats, 0.5)
    assert np.isnan(lo[0]) and np.isnan(hi[0])
    assert lo[1] == pytest.approx(2.0) and hi[1] == pytest.approx(4.0)


def test_percentile_bootstrap_coverage_on_bernoulli_data_is_close_to_95_percent():
    # 200 independent Bernoulli(0.3) datasets of 80 records, 400 replicates each,
    # vectorized: one resample matrix applied to every dataset (column).
    rng = np.random.default_rng(2024)
    p, n, datasets = 0.3, 80, 200
    data = (rng.random((n, datasets)) < p).astype(float)
    estimates = bootstrap_ratio(data, np.ones(n), replicates=400, entropy=[7])
    covered = np.mean([e.lo <= p <= e.hi for e in estimates])
    assert 0.90 <= covered <= 0.99, covered
    # A 50% interval must cover far less often (the level is honoured).
    narrow = bootstrap_ratio(data, np.ones(n), replicates=400, entropy=[7], level=0.5)
    covered_50 = np.mean([e.lo <= p <= e.hi for e in narrow])
    assert 0.35 <= covered_50 <= 0.65, covered_50


def test_paired_difference_of_identical_inputs_is_exactly_zero():
    rng = np.random.default_rng(0)
    num = rng.integers(0, 3, size=(12, 3)).astype(float)
    den = np.full(12, 3.0)
    for est in paired_difference(num, den, num, den, replicates=500, entropy=[1, 2]):
        assert (est.value, est.lo, est.hi) == (0.0, 0.0, 0.0)


def test_paired_difference_detects_a_shift_and_cancels_unit_effects():
    # B = A minus one success on every unit: the difference is exactly 1/2 in every
    # replicate (pairing cancels unit difficulty), so the interval is [0.5, 0.5].
    a = np.array([2.0, 1.0, 2.0, 1.0, 2.0])
    b = a - 1.0
    den = np.full(5, 2.0)
    est = paired_difference(a, den, b, den, replicates=300, entropy=3)
    assert est.value == pytest.approx(0.5)
    assert est.lo == pytest.approx(0.5) and est.hi == pytest.approx(0.5)
    # Unpaired intervals of the same data are wider than zero width.
    single = bootstrap_ratio(a, den, replicates=300, entropy=3)
    assert single.hi - single.lo > 0


def test_estimate_round_trips_through_json_form_with_nan_as_none():
    est = Estimate(float("nan"), float("nan"), float("nan"), 0, 0)
    data = est.to_dict()
    assert data["value"] is None and data["lo"] is None
    back = Estimate.from_dict(data)
    assert np.isnan(back.value) and back.n == 0
