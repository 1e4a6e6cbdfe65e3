"""Hidden-state probe (SAPLMA / FactoScope style).

Feature: the CTX pass hidden state at the last prediction row (the state that emits the
final response token) at a fixed layer ``round(f · L)`` (``f`` = ``probe_layer_fraction``
of the detection config, default 0.75; fixed in advance, never picked on test). A
class-balanced logistic regression on the standardized state gives P(unsafe)
(higher = riskier). Requires: the CTX pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from safescale.detection.baselines._base import LinearProbeDetector
from safescale.detection.registry import detector

if TYPE_CHECKING:
    from safescale.models.internals import Internals

__all__ = ["HiddenStateProbe", "probe_layer", "probe_vector"]


def probe_layer(n_layers: int, fraction: float) -> int:
    """The probed layer index in ``0..L`` for a depth fraction."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("probe layer fraction must be in [0, 1]")
    return round(fraction * n_layers)


def probe_vector(ctx: Internals, layer: int) -> np.ndarray:
    """``[D]`` hidden state at the last response row at ``layer``."""
    return ctx.hidden_states[layer, -1].double().numpy()


@detector("hidden_probe")
class HiddenStateProbe(LinearProbeDetector):
    """Logistic-regression probe on a late hidden state (higher = riskier)."""

    requires = frozenset({"ctx_pass"})
    column = "probe_hidden"
