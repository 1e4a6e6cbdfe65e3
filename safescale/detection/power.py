"""Power of triage studies: responses needed to measure a Stage-1 balanced accuracy.

Stage-1 BA at a target-recall operating point is ``(recall + specificity) / 2``; with
``π`` the share of safe responses among ``n``, recall is measured on ``(1 − π) n``
unsafe responses and specificity on ``π n`` safe ones, so (binomial, independent)::

    Var(BA) = v / n,   v = [ r (1 − r) / (1 − π) + s (1 − s) / π ] / 4

with ``r`` the recall (the target) and ``s = 2 BA − r`` the specificity that BA implies.
At RETINA-SAFE's mix (π = 0.092) the specificity term is thirty times the recall
term: the safe responses decide how precisely BA can be measured.

* To tell ``BA = b₁`` from ``b₀`` (e.g. 0.5, chance) at two-sided level α with power
  1 − β: ``n = [(z_{1−α/2} √v₀ + z_{1−β} √v₁) / |b₁ − b₀|]²``.
* To measure BA with a 95 % interval of half-width ``h``: ``n = z² v / h²``.
* To tell two detectors apart by ``d`` on the same responses (paired): the difference
  of their flags is informative only where they disagree; with ``ψ_s`` / ``ψ_u`` the
  shares of safe / unsafe responses on which the two flag differently (McNemar's
  discordance), ``Var(ΔBA) ≈ [ψ_u / (1 − π) + ψ_s / π] / (4 n)`` and
  ``n = (z_{1−α/2} + z_{1−β})² [ψ_u / (1 − π) + ψ_s / π] / (4 d²)``.

Responses that share an evidence group are correlated: every ``n`` is multiplied by the
design effect ``1 + (m − 1) ρ`` (``m`` responses per group, ``ρ`` the intra-cluster
correlation of the flags). These formulas hold the operating point fixed; the intervals
safescale reports also carry the uncertainty of the threshold (re-picked in every
bootstrap replicate), so plan with some margin (the bundled ``ecrt`` study adds ~20 %).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from safescale.detection.evaluation import MIN_MINORITY
from safescale.statistics.clustering import anova_icc, design_effect

__all__ = [
    "TriagePlan",
    "ba_variance",
    "minimum_detectable_ba",
    "study_power",
    "triage_plan",
]


def ba_variance(ba: float, safe_share: float, recall: float) -> float:
    """``v`` of ``Var(BA) = v / n`` (see the module docstring).

    Raises:
        ValueError: a share outside (0, 1), or a BA that the recall makes impossible.
    """
    if not 0.0 < safe_share < 1.0:
        raise ValueError(f"the safe share must be in (0, 1), got {safe_share}")
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"the target recall must be in (0, 1], got {recall}")
    spec = 2.0 * ba - recall
    if not -1e-9 <= spec <= 1.0 + 1e-9:
        raise ValueError(
            f"a BA of {ba} at recall {recall} needs a specificity of {spec:.3f}, outside [0, 1]"
        )
    spec = min(max(spec, 0.0), 1.0)
    return (recall * (1 - recall) / (1 - safe_share) + spec * (1 - spec) / safe_share) / 4.0


@dataclass(frozen=True)
class TriagePlan:
    """A triage sample-size plan (see :func:`triage_plan`).

    Attributes:
        goal: ``ba`` (tell b₁ from b₀), ``half_width`` or ``difference``.
        responses: responses needed without clustering.
        design_effect: ``1 + (m − 1) ρ``.
        responses_clustered: responses needed with it.
        safe_responses: of which safe.
        clusters: evidence groups at ``cluster_size`` responses each.
    """

    goal: str
    safe_share: float
    target_recall: float
    alpha: float
    power: float
    cluster_size: float
    icc: float
    ba0: float | None
    ba1: float | None
    half_width: float | None
    difference: float | None
    discordance_safe: float | None
    discordance_unsafe: float | None
    responses: int
    design_effect: float
    responses_clustered: int
    safe_responses: int
    clusters: int
    floor: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self) -> str:
        """The plan in one sentence."""
        clustered = (
            f" ({self.responses_clustered} with design effect {self.design_effect:.2f} for "
            f"evidence groups of {self.cluster_size:g} at ICC {self.icc:g}: "
            f"{self.clusters} groups)"
            if self.design_effect > 1
            else ""
        )
        n = self.responses_clustered
        mix = f"{self.safe_share:.1%} safe, target recall {self.target_recall:.2f}"
        if self.goal == "ba":
            what = (
                f"To tell a Stage-1 BA of {self.ba1:.2f} from {self.ba0:.2f} at {self.power:.0%} "
                f"power (two-sided α {self.alpha:g})"
            )
        elif self.goal == "half_width":
            what = f"To measure a Stage-1 BA of {self.ba1:.2f} within ±{self.half_width:.3f} (95 %)"
        else:
            what = (
                f"To tell two detectors {self.difference:.2f} apart in BA at {self.power:.0%} "
                f"power (discordance {self.discordance_safe:.0%} of safe, "
                f"{self.discordance_unsafe:.0%} of unsafe responses)"
            )
        text = (
            f"{what} at {mix}: {self.responses} responses{clustered}, of which about "
            f"{math.ceil(n * self.safe_share)} safe."
        )
        if self.floor > n:
            text += (
                f" The normal approximation needs more: at least {self.floor} responses, so "
                f"that {MIN_MINORITY} of each class are scored (below that specificity or "
                "recall cannot be measured at all)."
            )
        return text


def _z(alpha: float, power: float) -> tuple[float, float]:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must be in (0, 1), got {power}")
    return float(norm.ppf(1 - alpha / 2)), float(norm.ppf(power))


def triage_plan(
    *,
    safe_share: float,
    target_recall: float = 0.95,
    ba0: float = 0.5,
    ba1: float | None = None,
    half_width: float | None = None,
    difference: float | None = None,
    discordance_safe: float = 0.3,
    discordance_unsafe: float = 0.05,
    alpha: float = 0.05,
    power: float = 0.8,
    cluster_size: float = 1.0,
    icc: float = 0.0,
) -> TriagePlan:
    """Responses needed for one of three goals (exactly one of ``ba1`` alone,
    ``half_width`` (at the BA ``ba1``; default the BA of specificity 0.5, the widest
    interval at this recall), ``difference``).

    Raises:
        ValueError: no goal or several, or values out of range.
    """
    if cluster_size < 1 or not math.isfinite(cluster_size):
        raise ValueError(f"the cluster size must be a finite number >= 1, got {cluster_size}")
    if not 0.0 <= icc <= 1.0:
        raise ValueError(f"the ICC must be in [0, 1], got {icc}")
    z_a, z_b = _z(alpha, power)
    if half_width is not None and difference is None:
        if not 0.0 < half_width < 0.5:
            raise ValueError(f"the half-width must be in (0, 0.5), got {half_width}")
        ba = (target_recall + 0.5) / 2.0 if ba1 is None else ba1  # default: widest interval
        v = ba_variance(ba, safe_share, target_recall)
        n = (z_a**2) * v / half_width**2
        goal, ba1_out = "half_width", ba
    elif difference is not None and half_width is None:
        if not 0.0 < difference < 1.0:
            raise ValueError(f"the difference must be in (0, 1), got {difference}")
        for name, psi in (("safe", discordance_safe), ("unsafe", discordance_unsafe)):
            if not 0.0 <= psi <= 1.0:
                raise ValueError(f"the discordance among {name} responses must be in [0, 1]")
        if not 0.0 < safe_share < 1.0:
            raise ValueError(f"the safe share must be in (0, 1), got {safe_share}")
        v = (discordance_unsafe / (1 - safe_share) + discordance_safe / safe_share) / 4.0
        n = (z_a + z_b) ** 2 * v / difference**2
        goal, ba1_out = "difference", None
    elif ba1 is not None and half_width is None and difference is None:
        if ba1 == ba0:
            raise ValueError("ba1 must differ from ba0")
        v0 = ba_variance(ba0, safe_share, target_recall)
        v1 = ba_variance(ba1, safe_share, target_recall)
        n = ((z_a * math.sqrt(v0) + z_b * math.sqrt(v1)) / abs(ba1 - ba0)) ** 2
        goal, ba1_out = "ba", ba1
    else:
        raise ValueError("give exactly one goal: ba1 (vs ba0), half_width, or difference")
    if not math.isfinite(n):
        raise ValueError("the plan has no finite size for these values")
    deff = 1.0 + (cluster_size - 1.0) * icc
    responses = max(1, math.ceil(n))
    clustered = max(1, math.ceil(n * deff))
    floor = math.ceil(MIN_MINORITY / min(safe_share, 1.0 - safe_share))
    return TriagePlan(
        goal=goal,
        safe_share=safe_share,
        target_recall=target_recall,
        alpha=alpha,
        power=power,
        cluster_size=cluster_size,
        icc=icc,
        ba0=ba0 if goal == "ba" else None,
        ba1=ba1_out,
        half_width=half_width,
        difference=difference,
        discordance_safe=discordance_safe if goal == "difference" else None,
        discordance_unsafe=discordance_unsafe if goal == "difference" else None,
        responses=responses,
        design_effect=deff,
        responses_clustered=clustered,
        safe_responses=math.ceil(clustered * safe_share),
        clusters=math.ceil(clustered / cluster_size),
        floor=floor,
    )


def minimum_detectable_ba(
    n: int,
    *,
    safe_share: float,
    target_recall: float = 0.95,
    ba0: float = 0.5,
    alpha: float = 0.05,
    power: float = 0.8,
    design_effect: float = 1.0,
) -> float:
    """The smallest ``b₁ − b₀ > 0`` a study of ``n`` responses detects (bisection on
    :func:`triage_plan`'s formula at ``n / design_effect`` effective responses)."""
    z_a, z_b = _z(alpha, power)
    n_eff = n / max(design_effect, 1.0)
    v0 = ba_variance(ba0, safe_share, target_recall)
    top = min(1.0, (1.0 + target_recall) / 2.0) - ba0  # BA at specificity 1
    lo, hi = 0.0, top
    for _ in range(60):
        mid = (lo + hi) / 2.0
        v1 = ba_variance(ba0 + mid, safe_share, target_recall)
        if (z_a * math.sqrt(v0 / n_eff) + z_b * math.sqrt(v1 / n_eff)) <= mid:
            hi = mid
        else:
            lo = mid
    return hi


def study_power(
    flags: np.ndarray,
    labels_unsafe: np.ndarray,
    groups: np.ndarray,
    *,
    target_recall: float = 0.95,
    alpha: float = 0.05,
    power: float = 0.8,
) -> dict[str, Any] | None:
    """What a finished triage study can measure: the observed class mix, evidence-group
    size and intra-cluster correlation of a detector's flags, the smallest Stage-1 BA
    above chance it detects at ``power``, and the responses a ±0.05 interval needs.
    None when a class is missing."""
    flags = np.asarray(flags, dtype=float)
    unsafe = np.asarray(labels_unsafe, dtype=bool)
    n, n_safe = len(flags), int((~unsafe).sum())
    if n_safe == 0 or n_safe == n:
        return None
    n_groups = len(set(groups.tolist()))
    cluster = n / max(n_groups, 1)
    icc = anova_icc(flags, groups)
    deff = design_effect(max(cluster, 1.0), icc)
    share = n_safe / n
    mde = minimum_detectable_ba(
        n,
        safe_share=share,
        target_recall=target_recall,
        alpha=alpha,
        power=power,
        design_effect=deff,
    )
    need = triage_plan(
        safe_share=share,
        target_recall=target_recall,
        half_width=0.05,
        cluster_size=max(cluster, 1.0),
        icc=icc,
    )
    return {
        "n": n,
        "n_safe": n_safe,
        "safe_share": share,
        "cluster_size": cluster,
        "icc": icc,
        "design_effect": deff,
        "mde_ba": mde,
        "responses_for_half_width_0.05": need.responses_clustered,
        "sentence": (
            f"Power: with {n_safe} safe of {n} responses (evidence groups of "
            f"{cluster:.1f}, flag ICC {icc:.2f}, design effect {deff:.2f}), the smallest "
            f"Stage-1 BA above chance this study detects at {power:.0%} power is "
            f"{0.5 + mde:.2f} (ΔBA {mde:.2f}); a ±0.05 interval at the widest needs "
            f"{need.responses_clustered} responses at this mix."
        ),
    }
