"""CTX-vs-NOCTX pointwise mutual information baseline.

``pmi = (1/R) Σ_t [log p(y_t | evidence, x) − log p(y_t | x)]`` with only the evidence
dropped in the second pass. Score (higher = riskier): ``−pmi`` — a response the
evidence makes *less* likely is riskier. Requires: CTX and NOCTX passes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from safescale.detection.baselines._base import ScalarScoreDetector
from safescale.detection.registry import detector

if TYPE_CHECKING:
    from safescale.models.internals import Internals

__all__ = ["CtxNoctxPMI", "ctx_noctx_pmi"]


def ctx_noctx_pmi(ctx: Internals, noctx: Internals) -> float:
    """Mean per-token log-probability gain of the response from the evidence."""
    return float((ctx.response_logprobs.double() - noctx.response_logprobs.double()).mean())


@detector("pmi")
class CtxNoctxPMI(ScalarScoreDetector):
    """Negative CTX-vs-NOCTX PMI (higher = riskier)."""

    requires = frozenset({"ctx_pass", "noctx_pass"})
    column = "pmi"
    sign = -1.0
