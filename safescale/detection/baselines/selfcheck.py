"""Sampling-consistency baseline (SelfCheck-style, multiple-choice form).

``selfcheck = 1 − (1/N) Σ_k 1[letter(y^k) = chosen]``: the share of the N frozen
samples that disagree with the chosen option (samples read as no option count as
disagreeing). Higher = riskier. Requires: the record's frozen ``samples``.
"""

from __future__ import annotations

from collections.abc import Sequence

from safescale.detection.baselines._base import ScalarScoreDetector
from safescale.detection.registry import detector
from safescale.rundir import SampleRecord

__all__ = ["SelfCheckConsistency", "selfcheck_inconsistency"]


def selfcheck_inconsistency(chosen: str, samples: Sequence[SampleRecord]) -> float:
    """Share of samples not agreeing with ``chosen``; NaN without samples."""
    if not samples:
        return float("nan")
    return 1.0 - sum(s.letter == chosen for s in samples) / len(samples)


@detector("selfcheck")
class SelfCheckConsistency(ScalarScoreDetector):
    """Sample disagreement with the chosen option (higher = riskier)."""

    requires = frozenset({"samples"})
    column = "selfcheck"
