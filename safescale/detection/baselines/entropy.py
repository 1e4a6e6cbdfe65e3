"""Mean token entropy (MTE) baseline.

Score (higher = riskier): ``mte = (1/R) Σ_t H(p_t)``, ``H(p) = −Σ_v p(v) log p(v)``
(nats) from the raw CTX logits (not temperature or top-k processed scores).
Requires: the CTX teacher-forced pass.
"""

from __future__ import annotations

import torch

from safescale.detection.baselines._base import ScalarScoreDetector
from safescale.detection.registry import detector
from safescale.models.internals import Internals

__all__ = ["MeanTokenEntropy", "mean_token_entropy"]


def mean_token_entropy(ctx: Internals) -> float:
    """``(1/R) Σ_t H(softmax(z_t))`` in nats."""
    logp = torch.log_softmax(ctx.logits.double(), dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


@detector("mte")
class MeanTokenEntropy(ScalarScoreDetector):
    """Mean token entropy (higher = riskier)."""

    requires = frozenset({"ctx_pass"})
    column = "mte"
