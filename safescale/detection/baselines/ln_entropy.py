"""Length-normalized predictive entropy (LN-entropy) over frozen samples.

With K sampled answers ``y^k`` of lengths ``T_k`` and their raw token log-probs:
``ln_entropy = −(1/K) Σ_k (1/T_k) Σ_t log p(y^k_t)`` (higher = riskier). Samples with
no tokens are skipped. Requires: the record's frozen ``samples`` (no model call).
"""

from __future__ import annotations

from collections.abc import Sequence

from safescale.detection.baselines._base import ScalarScoreDetector
from safescale.detection.registry import detector
from safescale.rundir import SampleRecord

__all__ = ["LNEntropy", "ln_entropy"]


def ln_entropy(samples: Sequence[SampleRecord]) -> float:
    """LN-entropy of the samples; NaN when no sample carries token log-probs."""
    per_sample = [
        -sum(s.token_logprobs) / len(s.token_logprobs) for s in samples if s.token_logprobs
    ]
    return float(sum(per_sample) / len(per_sample)) if per_sample else float("nan")


@detector("ln_entropy")
class LNEntropy(ScalarScoreDetector):
    """Length-normalized entropy of the frozen samples (higher = riskier)."""

    requires = frozenset({"samples"})
    column = "ln_entropy"
