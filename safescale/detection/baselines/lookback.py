"""Lookback-Lens attention ratios + logistic regression.

From the CTX pass's eager attention weights ``a[l, h, t, k]`` (row t = prediction
position ``P − 1 + t``; keys ``k``): per layer and head,
``A_ctx = mean_{k < P} a``, ``A_new = mean_{P ≤ k ≤ P − 1 + t} a`` (0 when t = 0),
``LR_{l,h,t} = A_ctx / (A_ctx + A_new)``, averaged over the response rows → L·H
features. The context is the whole prompt. A class-balanced logistic regression on
the standardized ratios gives P(unsafe) (higher = riskier). Requires: the CTX pass
with attentions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from safescale.detection.baselines._base import LinearProbeDetector
from safescale.detection.registry import detector

if TYPE_CHECKING:
    from safescale.models.internals import Internals

__all__ = ["LookbackLens", "lookback_ratios"]


def lookback_ratios(ctx: Internals) -> np.ndarray:
    """``[L * H]`` lookback ratios averaged over response rows (layer-major order)."""
    import torch

    if ctx.attentions is None:
        raise ValueError("lookback ratios need the attention weights of the CTX pass")
    att = ctx.attentions.double()  # [L, H, R, S]
    P = ctx.prompt_length
    L, H, R, _ = att.shape
    a_ctx = att[..., :P].mean(-1)  # [L, H, R]
    new_sum = att[..., P:].sum(-1)  # keys after the prompt (causally only < P + t)
    n_new = torch.arange(R, dtype=torch.float64).clamp(min=1)
    a_new = torch.where(torch.arange(R) > 0, new_sum / n_new, torch.zeros(()))
    ratio = a_ctx / (a_ctx + a_new).clamp(min=1e-12)
    return ratio.mean(-1).reshape(L * H).numpy()


@detector("lookback_lens")
class LookbackLens(LinearProbeDetector):
    """Logistic regression on lookback ratios (higher = riskier)."""

    requires = frozenset({"ctx_pass", "attentions"})
    column = "lookback"
