"""EigenScore (INSIDE) over the frozen samples.

The K frozen samples are teacher-forced after the CTX prompt (one batched pass); the
hidden state of each sample's last token at the middle layer ``L // 2`` forms
``Z`` (K × d). With ``J_d`` the centering matrix over the d features,
``C = Z J_d Zᵀ + α I_K`` (α = 1e-3) and ``eigenscore = (1/K) Σ_k log λ_k(C)``.
Higher (more diverse samples) = riskier. Requires: ``samples`` with token ids (at
least two non-empty) and one extra batched pass (``sample_hidden``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from safescale.detection.baselines._base import ScalarScoreDetector
from safescale.detection.registry import detector
from safescale.rundir import SampleRecord

if TYPE_CHECKING:
    from safescale.models.backend import LanguageModel

__all__ = ["EigenScore", "eigenscore", "sample_embeddings"]


def eigenscore(Z: np.ndarray, alpha: float = 1e-3) -> float:
    """Mean log eigenvalue of the regularized sample Gram matrix of ``Z`` (K × d)."""
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] < 2:
        raise ValueError("eigenscore needs at least two sample embeddings")
    centered = Z - Z.mean(axis=1, keepdims=True)  # Z J_d
    gram = centered @ centered.T + alpha * np.eye(Z.shape[0])
    eig = np.linalg.eigvalsh(gram)
    return float(np.mean(np.log(np.clip(eig, 1e-300, None))))


def sample_embeddings(
    lm: LanguageModel, message: str, samples: Sequence[SampleRecord], layer: int
) -> np.ndarray:
    """``[K', d]`` layer-``layer`` hidden state at the last token of each non-empty sample."""
    import torch

    with torch.inference_mode():
        prompt = lm.prompt_ids(message)
        seqs = [prompt + list(s.token_ids) for s in samples if s.token_ids]
        if not seqs:
            return np.zeros((0, 0))
        width = max(len(s) for s in seqs)
        pad = lm.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        out = lm.model(
            input_ids=ids.to(lm.device),
            attention_mask=mask.to(lm.device),
            use_cache=False,
            output_hidden_states=True,
        )
        hidden = out.hidden_states[layer]
        last = torch.tensor([len(s) - 1 for s in seqs], device=hidden.device)
        return hidden[torch.arange(len(seqs), device=hidden.device), last].float().cpu().numpy()


@detector("eigenscore")
class EigenScore(ScalarScoreDetector):
    """Semantic diversity of the frozen samples (higher = riskier)."""

    requires = frozenset({"samples", "sample_hidden"})
    column = "eigenscore"
