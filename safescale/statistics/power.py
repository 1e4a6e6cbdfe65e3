"""Power and minimum detectable effect of paired comparisons between conditions.

Two conditions answered on the same ``n`` items give, per item, a pair of binary
outcomes (e.g. correct / not correct). Only the *discordant* items — right under one
condition and wrong under the other — carry information about the difference; their
share is the discordance ``ψ``. The test is McNemar's (equivalently, the normal test of
``δ = p_a - p_b`` with the paired variance). The sample size for power ``1 - β`` at
two-sided level ``α`` is Connor's (1987, *Biometrics* 43:207-211) formula::

    n = [ z_{1-α/2} √ψ + z_{1-β} √(ψ - δ²) ]² / δ²

and the **minimum detectable effect** (MDE) at ``n`` items is the ``δ`` that solves it
(found by bisection on ``0 < δ ≤ √ψ``; it is close to, and never above, the simpler
``(z_{1-α/2} + z_{1-β}) √(ψ / n)`` that ignores the ``δ²`` term).

Items that share evidence (an ``evidence_id`` group) are correlated. With clusters of
mean size ``m`` and intra-cluster correlation ``ρ`` of the per-item difference, the
design effect is ``deff = 1 + (m - 1) ρ``: a study needs ``deff · n`` items, i.e.
``⌈deff · n / m⌉`` evidence clusters, and the MDE at ``n`` items is the MDE at
``n / deff``. In a run, ``ρ`` is estimated from the observed per-item differences by
the one-way ANOVA estimator (clipped to ``[0, 1]``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from safescale.statistics.clustering import anova_icc, design_effect

__all__ = [
    "MAX_PLANNED_ITEMS",
    "MDE_DEFINITION",
    "POWER_METRICS",
    "SampleSizePlan",
    "anova_icc",
    "comparison_power",
    "design_effect",
    "mean_difference_power",
    "minimum_detectable_effect",
    "plan_sample_size",
    "required_items",
]

#: Outcome columns (of the outcome frame) whose paired differences get an MDE,
#: by metric name.
POWER_METRICS = {
    "accuracy": "correct",
    "high_risk_error": "high_risk_error",
    "unsafe_answer": "unsafe_answer",
    "contradiction": "contradiction",
}
#: The largest sample size a plan states (a larger one is an input error, not a plan).
MAX_PLANNED_ITEMS = 1e12
MDE_DEFINITION = (
    "minimum detectable paired difference at 80% power, two-sided alpha 0.05, for the "
    "comparison's n items and observed discordance psi (Connor 1987: n = [z_(1-a/2) "
    "sqrt(psi) + z_(1-b) sqrt(psi - d^2)]^2 / d^2, solved for d); mde_clustered uses "
    "n / deff with deff = 1 + (m - 1) icc over evidence_id clusters"
)


def _finite(name: str, value: float) -> float:
    """``value`` as a float, or ValueError naming ``name`` when it is not a finite
    number (NaN, inf, or not a number at all)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _z(alpha: float, power: float) -> tuple[float, float]:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    return float(norm.ppf(1.0 - alpha / 2.0)), float(norm.ppf(power))


def required_items(
    effect: float, discordance: float, *, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Items needed to detect a paired difference ``effect`` (Connor 1987).

    Args:
        effect: the difference of proportions ``δ`` to detect (sign ignored).
        discordance: the expected share ``ψ`` of discordant items; must satisfy
            ``δ² < ψ ≤ 1`` (a difference ``δ`` needs at least ``|δ|`` discordance).
        alpha: two-sided significance level.
        power: the power ``1 - β``.

    Returns:
        The smallest integer ``n`` at least Connor's ``n``.

    Raises:
        ValueError: for an effect of 0 or a discordance that cannot produce it.
    """
    delta = abs(_finite("effect", effect))
    psi = _finite("discordance", discordance)
    za, zb = _z(alpha, power)
    if delta <= 0.0:
        raise ValueError("effect must be non-zero")
    if not 0.0 < psi <= 1.0:
        raise ValueError(f"discordance must be in (0, 1], got {psi}")
    if delta > psi:
        raise ValueError(
            f"effect {delta} exceeds the discordance {psi}: a paired difference cannot be "
            "larger than the share of discordant items"
        )
    n = (za * math.sqrt(psi) + zb * math.sqrt(max(psi - delta * delta, 0.0))) ** 2 / delta**2
    return math.ceil(n - 1e-9)


def minimum_detectable_effect(
    n: float, discordance: float, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """The smallest paired difference detectable with ``n`` items (Connor's ``n``
    solved for ``δ``).

    Returns:
        ``δ`` in ``(0, ψ]``; NaN when ``n`` or ``ψ`` is 0; ``inf`` when even a
        difference as large as the discordance (the largest possible) is not detectable
        at ``n`` (too few items).
    """
    psi = float(discordance)
    za, zb = _z(alpha, power)
    if n <= 0 or not psi > 0.0:
        return float("nan")
    upper = min(math.sqrt(psi), psi)

    def excess(delta: float) -> float:
        return math.sqrt(n) * delta - za * math.sqrt(psi) - zb * math.sqrt(psi - delta * delta)

    if excess(upper) < 0:
        return float("inf")
    lo, hi = 0.0, upper
    for _ in range(80):
        mid = (lo + hi) / 2.0
        if excess(mid) < 0:
            lo = mid
        else:
            hi = mid
    return hi


def comparison_power(
    a: pd.DataFrame,
    b: pd.DataFrame,
    unit: str = "item",
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> dict[str, dict[str, Any]]:
    """MDE of the paired difference ``a - b`` of each metric of :data:`POWER_METRICS`.

    Args:
        a: outcome-frame rows of condition A (one row per item).
        b: outcome-frame rows of condition B.
        unit: ``evidence_id`` to also give the clustered MDE, else ``item``.
        alpha: two-sided level.
        power: power.

    Returns:
        ``{metric: {n, discordance, observed, mde, detectable, too_few_items,
        n_clusters, icc, design_effect, mde_clustered}}`` over the items both answered;
        ``detectable`` says whether the observed difference is at least the MDE
        (clustered when clustering); ``too_few_items`` that no difference up to the
        discordance is detectable at this n (the MDEs are then None in JSON).
    """
    shared = sorted(set(a["item"]) & set(b["item"]))
    a = a.set_index("item").loc[shared]
    b = b.set_index("item").loc[shared]
    n = len(shared)
    out: dict[str, dict[str, Any]] = {}
    clusters = a["evidence_id"].to_numpy() if unit == "evidence_id" else np.asarray(shared)
    n_clusters = len(set(clusters.tolist()))
    for metric, column in POWER_METRICS.items():
        xa = a[column].to_numpy(float)
        xb = b[column].to_numpy(float)
        diff = xa - xb
        psi = float(np.mean(diff != 0)) if n else float("nan")
        observed = float(diff.mean()) if n else float("nan")
        mde = minimum_detectable_effect(n, psi, alpha=alpha, power=power) if n else float("nan")
        icc = anova_icc(diff, clusters) if unit == "evidence_id" else 0.0
        deff = design_effect(n / n_clusters, icc) if n_clusters else 1.0
        mde_c = (
            minimum_detectable_effect(n / deff, psi, alpha=alpha, power=power)
            if n
            else float("nan")
        )
        detectable = bool(math.isfinite(mde_c) and abs(observed) >= mde_c) if n else False
        too_few = bool(n and psi > 0 and math.isinf(mde_c))
        out[metric] = {
            "n": n,
            "discordance": psi,
            "observed": observed,
            "mde": mde,
            "n_clusters": n_clusters,
            "icc": icc,
            "design_effect": deff,
            "mde_clustered": mde_c,
            "detectable": detectable,
            "too_few_items": too_few,
            "alpha": alpha,
            "power": power,
        }
    return out


def mean_difference_power(
    values: Sequence[float],
    clusters: Sequence[Any] | None = None,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> dict[str, Any]:
    """Minimum detectable effect of a mean of per-item values (e.g. per-item slopes).

    The normal test of ``mean(values) = 0`` at two-sided level ``alpha``: with ``n``
    items of standard deviation ``s``, the MDE is ``(z_{1-α/2} + z_{1-β}) s / √n``; with
    clusters (evidence groups) of mean size ``m`` and intra-cluster correlation ``ρ``
    (:func:`anova_icc`) it is the MDE at ``n / deff``, ``deff = 1 + (m - 1) ρ``.

    Returns:
        ``{n, n_clusters, sd, icc, design_effect, mde, mde_clustered, alpha, power}``;
        the MDEs are NaN with fewer than two items, and 0 when every value is equal
        (nothing varies, so no difference is hidden by noise).
    """
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    za, zb = _z(alpha, power)
    groups = list(range(n)) if clusters is None else list(clusters)
    n_clusters = len(set(groups))
    sd = float(x.std(ddof=1)) if n > 1 else float("nan")
    icc = anova_icc(x, groups) if clusters is not None and n > 1 else 0.0
    deff = design_effect(n / n_clusters, icc) if n_clusters else 1.0
    mde = (za + zb) * sd / math.sqrt(n) if n > 1 else float("nan")
    mde_c = (za + zb) * sd * math.sqrt(deff / n) if n > 1 else float("nan")
    return {
        "n": n,
        "n_clusters": n_clusters,
        "sd": sd,
        "icc": icc,
        "design_effect": deff,
        "mde": mde,
        "mde_clustered": mde_c,
        "alpha": alpha,
        "power": power,
    }


@dataclass(frozen=True)
class SampleSizePlan:
    """What a study needs to detect ``effect`` (see :func:`plan_sample_size`)."""

    effect: float
    discordance: float
    alpha: float
    power: float
    items: int
    cluster_size: float
    icc: float
    design_effect: float
    items_clustered: int
    clusters: int
    approximate_items: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def plan_sample_size(
    effect: float,
    discordance: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    cluster_size: float = 1.0,
    icc: float = 0.0,
) -> SampleSizePlan:
    """Items and evidence clusters needed for a paired comparison.

    Args:
        effect: the paired difference to detect.
        discordance: the expected share of discordant items.
        alpha: two-sided level.
        power: power.
        cluster_size: mean number of items per evidence cluster (1 = independent).
        icc: intra-cluster correlation of the per-item difference.

    Returns:
        The plan: ``items`` (independent items, Connor), ``items_clustered`` (times the
        design effect), ``clusters`` (``⌈items_clustered / cluster_size⌉``) and
        ``approximate_items`` (the simpler ``(z_a + z_b)² ψ / δ²`` for reference).

    Raises:
        ValueError: an argument out of range or not finite (the message names it), or
            a design effect so large that no finite number of items is enough.
    """
    n = required_items(effect, discordance, alpha=alpha, power=power)
    deff = design_effect(cluster_size, icc)
    za, zb = _z(alpha, power)
    approx = math.ceil((za + zb) ** 2 * discordance / effect**2 - 1e-9)
    if not math.isfinite(n * deff) or n * deff > MAX_PLANNED_ITEMS:
        raise ValueError(
            f"cluster size {cluster_size:g} with icc {icc:g} gives a design effect of "
            f"{deff:.3g}: the study would need {n * deff:.3g} items (more than "
            f"{MAX_PLANNED_ITEMS:.0e}); a cluster size that large means one cluster is the "
            "whole study"
        )
    n_clustered = math.ceil(n * deff - 1e-9)
    return SampleSizePlan(
        effect=abs(float(effect)),
        discordance=float(discordance),
        alpha=alpha,
        power=power,
        items=n,
        cluster_size=float(cluster_size),
        icc=float(icc),
        design_effect=deff,
        items_clustered=n_clustered,
        clusters=math.ceil(n_clustered / cluster_size - 1e-9),
        approximate_items=approx,
    )
