"""Statistics shared by every layer (no model, no torch): clustering of correlated items.

Items that share an evidence group are correlated; the helpers here measure how much
(the intra-cluster correlation) and what it costs (the design effect). The power of
paired comparisons (:mod:`safescale.statistics.power`) and of triage studies
(:mod:`safescale.detection.power`) both use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["anova_icc", "design_effect"]


def design_effect(cluster_size: float, icc: float) -> float:
    """``1 + (m - 1) ρ`` for clusters of mean size ``m`` and correlation ``ρ``."""
    for name, value in (("cluster size", cluster_size), ("icc", icc)):
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} must be a finite number, got {value}")
    if cluster_size < 1:
        raise ValueError(f"cluster size must be at least 1, got {cluster_size}")
    if not 0.0 <= icc <= 1.0:
        raise ValueError(f"icc must be in [0, 1], got {icc}")
    return 1.0 + (float(cluster_size) - 1.0) * float(icc)


def anova_icc(values: Sequence[float], clusters: Sequence[Any]) -> float:
    """One-way ANOVA estimate of the intra-cluster correlation, clipped to [0, 1].

    ``(MSB - MSW) / (MSB + (m0 - 1) MSW)`` with ``m0 = (N - Σ m_j² / N) / (k - 1)``;
    0 when there is a single cluster, every cluster is a singleton, or there is no
    variance at all.
    """
    frame = pd.DataFrame({"y": np.asarray(values, dtype=float), "g": list(clusters)})
    n_total = len(frame)
    grouped = frame.groupby("g")["y"]
    sizes = grouped.size().to_numpy(float)
    k = len(sizes)
    if k < 2 or n_total <= k:
        return 0.0
    means = grouped.mean().to_numpy(float)
    grand = float(frame["y"].mean())
    ssb = float((sizes * (means - grand) ** 2).sum())
    ssw = float(((frame["y"] - grouped.transform("mean")) ** 2).sum())
    msb, msw = ssb / (k - 1), ssw / (n_total - k)
    m0 = (n_total - float((sizes**2).sum()) / n_total) / (k - 1)
    denom = msb + (m0 - 1.0) * msw
    if denom <= 0:
        return 0.0
    return float(min(max((msb - msw) / denom, 0.0), 1.0))
