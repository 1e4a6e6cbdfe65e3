"""Maximum-softmax-probability baselines, two distinct meanings named apart.

* ``msp_seq`` = −Σ_t log p(y_t): the negative log-likelihood of the whole response
  (higher = riskier). On the same token sequence it equals LM-Polygraph's
  ``MaximumSequenceProbability``; the end-of-sequence token is handled as documented in
  :func:`~safescale.detection.baselines._base.scored_positions` (a final EOS is scored
  by default, like LM-Polygraph; ``include_eos=False`` leaves it out, which lowers
  ``msp_seq`` by exactly −log p(EOS)).
* ``msp_step`` = 1 − (1/R) Σ_t max_v p_t(v): one minus the mean per-step maximum
  softmax probability (higher = riskier).

Requires: the CTX teacher-forced pass (raw logits).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from safescale.detection.baselines._base import ScalarScoreDetector, scored_positions
from safescale.detection.registry import detector

if TYPE_CHECKING:
    from safescale.models.internals import Internals

__all__ = ["MSPSequence", "MSPStep", "msp_seq", "msp_step"]


def msp_seq(ctx: Internals, *, include_eos: bool = True, eos_token_id: int | None = None) -> float:
    """``−Σ_t log p(y_t)`` over the scored positions (see ``scored_positions``)."""
    keep = scored_positions(ctx.response_ids, include_eos=include_eos, eos_token_id=eos_token_id)
    return float(-ctx.response_logprobs[keep].double().sum())


def msp_step(ctx: Internals, *, include_eos: bool = True, eos_token_id: int | None = None) -> float:
    """``1 − mean_t max_v p_t(v)`` over the scored positions."""
    import torch

    keep = scored_positions(ctx.response_ids, include_eos=include_eos, eos_token_id=eos_token_id)
    probs = torch.softmax(ctx.logits[keep].double(), dim=-1)
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
