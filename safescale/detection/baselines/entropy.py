"""Mean token entropy (MTE) baseline.

Score (higher = riskier): ``mte = (1/R) Σ_t H(p_t)``, ``H(p) = −Σ_v p(v) log p(v)``
(nats) from the raw CTX logits (not temperature or top-k processed scores).
A final EOS position is scored by default (see
:func:`~safescale.detection.baselines._base.scored_positions`). Requires: the CTX
teacher-forced pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from safescale.detection.baselines._base import ScalarScoreDetector, scored_positions
from safescale.detection.registry import detector

if TYPE_CHECKING:
    from safescale.models.internals import Internals

__all__ = ["MeanTokenEntropy", "mean_token_entropy"]


def mean_token_entropy(
    ctx: Internals, *, include_eos: bool = True, eos_token_id: int | None = None
) -> float:
    """``(1/R) Σ_t H(softmax(z_t))`` in nats, over the scored positions."""
    import torch

    keep = scored_positions(ctx.response_ids, include_eos=include_eos, eos_token_id=eos_token_id)
    logp = torch.log_softmax(ctx.logits[keep].double(), dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


@detector("mte")
class MeanTokenEntropy(ScalarScoreDetector):
    """Mean token entropy (higher = riskier)."""

    requires = frozenset({"ctx_pass"})
    column = "mte"
