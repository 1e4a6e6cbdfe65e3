"""Response length (a known confounder, reported beside every detector).

Score: ``R``, the number of response tokens (longer = riskier by convention).
Requires: the CTX pass (for the tokenization the passes used).
"""

from __future__ import annotations

from safescale.detection.baselines._base import ScalarScoreDetector
from safescale.detection.registry import detector

__all__ = ["ResponseLength"]


@detector("length")
class ResponseLength(ScalarScoreDetector):
    """Number of response tokens (higher = riskier by convention)."""

    requires = frozenset({"ctx_pass"})
    column = "length"
