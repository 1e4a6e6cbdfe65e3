"""ReDeEP: external-context vs parametric-knowledge scores (Sun et al., 2024).

"ReDeEP: Detecting Hallucination in Retrieval-Augmented Generation via Mechanistic
Interpretability" (arXiv:2410.11414; ICLR 2025). Two token-level signals of the CTX
pass, averaged over the response tokens:

* **External Context Score** per attention head ``(l, h)``: the cosine similarity
  between the final-layer state of the response position and the mean final-layer
  state of the prompt tokens that head attends to most (its top 10 % of prompt
  positions by attention weight). Low ECS: the head's attended context does not shape
  the response (the paper's "copying heads" fail to use the evidence).
* **Parametric Knowledge Score** per layer ``l``: the Jensen-Shannon divergence between
  the logit lens of the residual stream before and after the layer's feed-forward block
  (:attr:`~safescale.models.internals.Internals.ffn_js`). High PKS: the FFN's
  parametric knowledge rewrites the prediction.

Score (higher = riskier), as the paper's token-level detector:
``Σ_{l ∈ F} z(PKS_l) − Σ_{(l,h) ∈ A} z(ECS_{l,h})``, where ``F`` (``n_layers``
layers) and ``A`` (``n_heads`` heads) are the layers whose PKS correlates most
positively and the heads whose ECS correlates most negatively with the unsafe label on
the **training split only** (the paper selects them on its training data; choosing them
on test would leak), and ``z`` standardizes with the training mean and deviation. The
paper weights the two sums by coefficients tuned on its data; here both weigh 1 after
standardization.

Requires: the CTX pass with attentions and feed-forward states (``ffn_states``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from safescale.detection.registry import SAFE, Detector, DetectorUnavailable, detector

if TYPE_CHECKING:
    from safescale.models.internals import Internals

__all__ = ["ECS_TOP_FRACTION", "ReDeEP", "redeep_inputs"]

#: Share of the prompt positions a head attends to most that make up its context.
ECS_TOP_FRACTION = 0.1


def redeep_inputs(ctx: Internals) -> dict[str, list[float]]:
    """``pks`` ``[L]`` and ``ecs`` ``[L * H]`` (layer-major) means over response rows."""
    import torch

    if ctx.attentions is None or ctx.ffn_js is None or ctx.context_hidden is None:
        raise ValueError("ReDeEP needs a CTX pass with attentions and feed-forward states")
    att = ctx.attentions.float()  # [L, H, R, S]
    P = ctx.prompt_length
    L, H = att.shape[:2]
    context = ctx.context_hidden.float()[:P]  # [P, D]
    final = ctx.hidden_states[-1].float()  # [R, D] final-layer state of each query row
    k = max(1, math.ceil(ECS_TOP_FRACTION * P))
    ecs = torch.empty(L, H)
    final_unit = torch.nn.functional.normalize(final, dim=-1)
    for layer in range(L):
        top = att[layer, :, :, :P].topk(k, dim=-1).indices  # [H, R, k]
        pooled = context[top].mean(dim=2)  # [H, R, D]
        cos = (torch.nn.functional.normalize(pooled, dim=-1) * final_unit[None]).sum(-1)
        ecs[layer] = cos.mean(-1)
    pks = ctx.ffn_js.float().mean(-1)  # [L]
    return {"pks": pks.tolist(), "ecs": ecs.reshape(L * H).tolist()}


def _column(frame: pd.DataFrame, column: str, who: str) -> np.ndarray:
    if column not in frame.columns:
        raise DetectorUnavailable(f"{who}: {column!r} was not extracted for this run")
    values = frame[column].tolist()
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
        raise DetectorUnavailable(f"{who}: some records lack {column!r}")
    X = np.asarray([np.asarray(v, dtype=np.float64) for v in values])
    if X.ndim != 2:
        raise DetectorUnavailable(f"{who}: {column!r} vectors are ragged")
    return X


def _correlation(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column with ``y`` (0 for constant columns)."""
    Xc = X - X.mean(0)
    yc = y - y.mean()
    denom = np.sqrt((Xc**2).sum(0) * (yc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (Xc * yc[:, None]).sum(0) / denom
    return np.nan_to_num(r)


@detector("redeep")
class ReDeEP(Detector):
    """ReDeEP token-level score: selected layers' PKS minus selected heads' ECS.

    Args:
        n_layers: layers kept in ``F`` (selected on the training records).
        n_heads: heads kept in ``A``.
    """

    requires = frozenset({"ctx_pass", "attentions", "ffn_states"})
    supervised = True  # the layers and heads are selected on labelled training records

    def __init__(self, n_layers: int = 3, n_heads: int = 8) -> None:
        self.n_layers = n_layers
        self.n_heads = n_heads

    def design_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """``[n, 1 + L + L·H]``: the number of layers ``L`` (a constant column, so the
        matrix says where PKS ends), the per-layer PKS, the per-head ECS."""
        pks = _column(frame, "redeep_pks", self.name)
        ecs = _column(frame, "redeep_ecs", self.name)
        return np.hstack([np.full((len(pks), 1), float(pks.shape[1])), pks, ecs])

    @staticmethod
    def _split(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_pks = int(X[0, 0]) if len(X) else 0
        return X[:, 1 : 1 + n_pks], X[:, 1 + n_pks :]

    def fit(self, X: np.ndarray, y: np.ndarray) -> ReDeEP:
        X = np.asarray(X, dtype=np.float64)
        unsafe = (np.asarray(y) != SAFE).astype(np.float64)
        if unsafe.min() == unsafe.max():
            raise ValueError(f"{self.name}: training needs both safe and unsafe records")
        pks, ecs = self._split(X)
        n_pks = pks.shape[1]
        r_pks, r_ecs = _correlation(pks, unsafe), _correlation(ecs, unsafe)
        self.layers_ = np.argsort(-r_pks, kind="stable")[: min(self.n_layers, n_pks)]
        self.heads_ = np.argsort(r_ecs, kind="stable")[: min(self.n_heads, ecs.shape[1])]
        p_sum, e_sum = pks[:, self.layers_].sum(1), ecs[:, self.heads_].sum(1)
        self.pks_mean_, self.pks_scale_ = float(p_sum.mean()), float(p_sum.std() or 1.0)
        self.ecs_mean_, self.ecs_scale_ = float(e_sum.mean()), float(e_sum.std() or 1.0)
        self.n_features_in_ = X.shape[1]
        return self

    def risk_score(self, X: np.ndarray) -> np.ndarray:
        pks, ecs = self._split(np.asarray(X, dtype=np.float64))
        p_sum = pks[:, self.layers_].sum(1)
        e_sum = ecs[:, self.heads_].sum(1)
        return (p_sum - self.pks_mean_) / self.pks_scale_ - (
            e_sum - self.ecs_mean_
        ) / self.ecs_scale_

    def _get_state(self, directory: Path) -> dict[str, Any]:
        return {
            "layers": self.layers_.tolist(),
            "heads": self.heads_.tolist(),
            "pks": [self.pks_mean_, self.pks_scale_],
            "ecs": [self.ecs_mean_, self.ecs_scale_],
        }

    def _set_state(self, state: dict[str, Any], directory: Path) -> None:
        self.layers_ = np.asarray(state["layers"], dtype=int)
        self.heads_ = np.asarray(state["heads"], dtype=int)
        self.pks_mean_, self.pks_scale_ = state["pks"]
        self.ecs_mean_, self.ecs_scale_ = state["ecs"]
