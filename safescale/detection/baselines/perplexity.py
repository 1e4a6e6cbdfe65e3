"""Perplexity baseline.

Score (higher = riskier): log-perplexity of the frozen response under the CTX prompt,
``nll_mean = −(1/R) Σ_t log p(y_t | y_<t, x)`` (monotone in perplexity = exp(nll_mean)).
A final EOS token is scored by default (see
:func:`~safescale.detection.baselines._base.scored_positions`). Requires: the CTX
teacher-forced pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from safescale.detection.baselines._base import ScalarScoreDetector, scored_positions
from safescale.detection.registry import detector

if TYPE_CHECKING:
    from safescale.models.internals import Internals

__all__ = ["Perplexity", "nll_mean"]


def nll_mean(ctx: Internals, *, include_eos: bool = True, eos_token_id: int | None = None) -> float:
    """``−(1/R) Σ_t log p(y_t)`` from the raw CTX logits, over the scored positions."""
    keep = scored_positions(ctx.response_ids, include_eos=include_eos, eos_token_id=eos_token_id)
    return float(-ctx.response_logprobs[keep].double().mean())


@detector("perplexity")
class Perplexity(ScalarScoreDetector):
    """Log-perplexity of the response (higher = riskier)."""

    requires = frozenset({"ctx_pass"})
    column = "nll_mean"
