"""Maximum-softmax-probability baselines, two distinct meanings named apart.

* ``msp_seq`` = −Σ_t log p(y_t): the negative log-likelihood of the whole response
  (LM-Polygraph's sequence "maximum sequence probability"; higher = riskier).
* ``msp_step`` = 1 − (1/R) Σ_t max_v p_t(v): one minus the mean per-step maximum
  softmax probability (higher = riskier).

Requires: the CTX teacher-forced pass (raw logits).
"""

from __future__ import annotations

import torch

from safescale.detection.baselines._base import ScalarScoreDetector
from safescale.detection.registry import detector
from safescale.models.internals import Internals

__all__ = ["MSPSequence", "MSPStep", "msp_seq", "msp_step"]


def msp_seq(ctx: Internals) -> float:
    """``−Σ_t log p(y_t)``."""
    return float(-ctx.response_logprobs.double().sum())


def msp_step(ctx: Internals) -> float:
    """``1 − mean_t max_v p_t(v)``."""
    probs = torch.softmax(ctx.logits.double(), dim=-1)
    return float(1.0 - probs.max(dim=-1).values.mean())


@detector("msp_seq")
class MSPSequence(ScalarScoreDetector):
    """Sequence negative log-likelihood (higher = riskier)."""

    requires = frozenset({"ctx_pass"})
    column = "msp_seq"


@detector("msp_step")
class MSPStep(ScalarScoreDetector):
    """One minus the mean per-step max probability (higher = riskier)."""

    requires = frozenset({"ctx_pass"})
    column = "msp_step"
