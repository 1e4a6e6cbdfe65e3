"""Seeded percentile bootstrap for rates, ratios and paired differences.

Every statistic here is a *ratio of sums over resampling units*: a unit is an item (or,
with clustering, an ``evidence_id`` group of items), and a replicate draws ``n_units``
units with replacement. A rate over records is then ``Σ_units successes / Σ_units
records`` and a latency in ms per token is ``Σ wall_ms / Σ tokens`` — both computed for
all replicates at once as ``counts @ numerators / counts @ denominators``, where
``counts`` is the (replicates × units) matrix of how often each unit was drawn.

Replicate ``r`` draws its units from its own generator,
``numpy.random.default_rng(SeedSequence(entropy).spawn(R)[r])``, so the resample of a
replicate depends only on the entropy (seed material) and ``r`` — not on the order in
which estimates are computed, nor on how many replicates were asked for. A resample
matrix can be computed once (:func:`replicate_counts`) and passed as ``counts=`` to
share it between statistics over the same units.

The interval is the percentile interval: the ``(1 - level) / 2`` and ``(1 + level) / 2``
quantiles of the replicate statistics (replicates whose denominator is zero are
ignored).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BootstrapConfig",
    "Estimate",
    "bootstrap_ratio",
    "key_entropy",
    "paired_difference",
    "percentile_interval",
    "replicate_counts",
]


class BootstrapConfig(BaseModel):
    """Bootstrap settings of an experiment (``bootstrap:`` in the YAML).

    Attributes:
        replicates: number of bootstrap replicates per estimate.
        seed: base seed; each cell and each replicate derive their own stream from it.
        cluster_by_evidence_id: resample ``evidence_id`` groups instead of items, so
            items sharing evidence (and hence correlated errors) move together.
        level: coverage of the percentile interval (0.95 = 95% CI).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    replicates: int = Field(1000, ge=10, le=1_000_000)
    seed: int = 0
    cluster_by_evidence_id: bool = True
    level: float = Field(0.95, gt=0.0, lt=1.0)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap percentile interval.

    Attributes:
        value: the statistic on the observed data (NaN when undefined, e.g. no records).
        lo: lower interval bound (NaN when undefined).
        hi: upper interval bound (NaN when undefined).
        n: number of records the statistic is computed over.
        n_units: number of resampling units (items or evidence groups).
    """

    value: float
    lo: float
    hi: float
    n: int
    n_units: int

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready form; NaN becomes None."""
        return {
            "value": _json_float(self.value),
            "lo": _json_float(self.lo),
            "hi": _json_float(self.hi),
            "n": self.n,
            "n_units": self.n_units,
        }

    @classmethod
    def from_dict(cls, data: dict[str, float | int | None]) -> Estimate:
        """Inverse of :meth:`to_dict` (None becomes NaN)."""

        def f(x: float | int | None) -> float:
            return float("nan") if x is None else float(x)

        return cls(
            value=f(data.get("value")),
            lo=f(data.get("lo")),
            hi=f(data.get("hi")),
            n=int(data.get("n") or 0),
            n_units=int(data.get("n_units") or 0),
        )


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def key_entropy(seed: int, *key: object) -> list[int]:
    """Entropy for a ``SeedSequence``: the base seed plus a stable digest of ``key``.

    The digest (sha256 of the key's ``repr``) does not depend on Python's hash
    randomization, so the same cell gets the same stream in every process.
    """
    digest = hashlib.sha256(repr(key).encode()).digest()
    return [int(seed) & 0xFFFFFFFF, *(int.from_bytes(digest[i : i + 4], "little") for i in (0, 4))]


def replicate_counts(n_units: int, replicates: int, entropy: int | Sequence[int]) -> np.ndarray:
    """How often each unit is drawn in each replicate.

    Args:
        n_units: number of resampling units.
        replicates: number of replicates ``R``.
        entropy: seed material; replicate ``r`` uses child ``r`` of
            ``SeedSequence(entropy)``.

    Returns:
        An int64 array of shape ``(R, n_units)`` whose rows each sum to ``n_units``.
    """
    counts = np.zeros((replicates, n_units), dtype=np.int64)
    if n_units == 0:
        return counts
    children = np.random.SeedSequence(entropy).spawn(replicates)
    for r, child in enumerate(children):
        draws = np.random.default_rng(child).integers(0, n_units, size=n_units)
        counts[r] = np.bincount(draws, minlength=n_units)
    return counts


def percentile_interval(stats: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of replicate statistics along axis 0 (NaN replicates ignored).

    Args:
        stats: array of shape ``(R, ...)``.
        level: interval coverage.

    Returns:
        ``(lo, hi)`` arrays of shape ``stats.shape[1:]`` (NaN where every replicate is
        NaN).
    """
    alpha = (1.0 - level) / 2.0
    stats = np.asarray(stats, dtype=np.float64)
    finite = np.isfinite(stats)
    lo = np.full(stats.shape[1:], np.nan)
    hi = np.full(stats.shape[1:], np.nan)
    any_finite = finite.any(axis=0)
    if np.all(any_finite):
        lo, hi = np.nanquantile(stats, [alpha, 1.0 - alpha], axis=0)
    elif np.any(any_finite):
        sub = stats[:, any_finite]
        q = np.nanquantile(sub, [alpha, 1.0 - alpha], axis=0)
        lo[any_finite], hi[any_finite] = q[0], q[1]
    return lo, hi


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _resample(
    counts: np.ndarray | None, n_units: int, replicates: int, entropy: int | Sequence[int]
) -> np.ndarray:
    if counts is None:
        counts = replicate_counts(n_units, replicates, entropy)
    elif counts.shape[1] != n_units:
        raise ValueError(f"counts cover {counts.shape[1]} units, the data {n_units}")
    return np.asarray(counts, dtype=np.float64)


def bootstrap_ratio(
    numerators: np.ndarray,
    denominators: np.ndarray,
    *,
    replicates: int = 1000,
    entropy: int | Sequence[int] = 0,
    level: float = 0.95,
    n_records: int | None = None,
    counts: np.ndarray | None = None,
) -> list[Estimate] | Estimate:
    """Ratio-of-sums estimates with percentile bootstrap intervals.

    Args:
        numerators: per-unit sums, shape ``(n_units,)`` for one statistic or
            ``(n_units, m)`` for ``m`` statistics sharing one resample.
        denominators: per-unit sums of the same shape (or ``(n_units,)`` shared by all
            statistics). A rate over records uses the unit's record count; a plain mean
            over units uses ones.
        replicates: number of bootstrap replicates.
        entropy: seed material (see :func:`replicate_counts`).
        level: interval coverage.
        n_records: record count reported in the estimates (default: the summed
            denominator of the first statistic, rounded).
        counts: a precomputed ``(R, n_units)`` resample matrix (from
            :func:`replicate_counts`) to share one resample between calls; overrides
            ``replicates`` and ``entropy``.

    Returns:
        One :class:`Estimate` for 1-D input, else a list of ``m`` estimates.
    """
    num = np.asarray(numerators, dtype=np.float64)
    den = np.asarray(denominators, dtype=np.float64)
    single = num.ndim == 1
    if single:
        num = num[:, None]
    if den.ndim == 1:
        den = np.broadcast_to(den[:, None], num.shape)
    if den.shape != num.shape:
        raise ValueError(f"numerators {num.shape} and denominators {den.shape} differ in shape")
    n_units = num.shape[0]
    point = _ratio(num.sum(axis=0), den.sum(axis=0))
    counts = _resample(counts, n_units, replicates, entropy)
    stats = _ratio(counts @ num, counts @ den)
    lo, hi = percentile_interval(stats, level)
    n = int(np.rint(den[:, 0].sum())) if n_records is None else int(n_records)
    estimates = [
        Estimate(float(point[j]), float(lo[j]), float(hi[j]), n, n_units)
        for j in range(num.shape[1])
    ]
    return estimates[0] if single else estimates


def paired_difference(
    numerators_a: np.ndarray,
    denominators_a: np.ndarray,
    numerators_b: np.ndarray,
    denominators_b: np.ndarray,
    *,
    replicates: int = 1000,
    entropy: int | Sequence[int] = 0,
    level: float = 0.95,
    n_records: int | None = None,
    counts: np.ndarray | None = None,
) -> list[Estimate] | Estimate:
    """Paired bootstrap of ``ratio(A) - ratio(B)`` over shared units.

    Row ``u`` of the A and B arrays must describe the same unit (item or evidence
    group) under the two settings; every replicate draws one set of units and
    evaluates both ratios on it, so unit-level difficulty cancels. Two identical inputs
    give a difference of exactly 0 in every replicate, hence the interval ``[0, 0]``.

    Args:
        numerators_a: per-unit sums under A, ``(n_units,)`` or ``(n_units, m)``.
        denominators_a: per-unit denominators under A (same shape, or ``(n_units,)``).
        numerators_b: per-unit sums under B.
        denominators_b: per-unit denominators under B.
        replicates: number of bootstrap replicates.
        entropy: seed material.
        level: interval coverage.
        n_records: record pairs reported in the estimates.
        counts: a precomputed ``(R, n_units)`` resample matrix (overrides
            ``replicates`` and ``entropy``).

    Returns:
        One :class:`Estimate` of the difference for 1-D input, else a list.
    """
    arrays = [np.asarray(x, dtype=np.float64) for x in (numerators_a, denominators_a)]
    arrays += [np.asarray(x, dtype=np.float64) for x in (numerators_b, denominators_b)]
    single = arrays[0].ndim == 1
    shaped = []
    for x in arrays:
        x = x[:, None] if x.ndim == 1 else x
        shaped.append(x)
    m = max(x.shape[1] for x in shaped)
    num_a, den_a, num_b, den_b = (np.broadcast_to(x, (x.shape[0], m)) for x in shaped)
    if not (num_a.shape[0] == den_a.shape[0] == num_b.shape[0] == den_b.shape[0]):
        raise ValueError("paired inputs must describe the same units (equal first dimension)")
    n_units = num_a.shape[0]
    point = _ratio(num_a.sum(0), den_a.sum(0)) - _ratio(num_b.sum(0), den_b.sum(0))
    counts = _resample(counts, n_units, replicates, entropy)
    stats = _ratio(counts @ num_a, counts @ den_a) - _ratio(counts @ num_b, counts @ den_b)
    lo, hi = percentile_interval(stats, level)
    n = int(np.rint(den_a[:, 0].sum())) if n_records is None else int(n_records)
    estimates = [
        Estimate(float(point[j]), float(lo[j]), float(hi[j]), n, n_units) for j in range(m)
    ]
    return estimates[0] if single else estimates
