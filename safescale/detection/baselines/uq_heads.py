"""UQ Heads: a small supervised head on frozen attention and probability features.

Adapted from "A Head to Predict and a Head to Question: Pre-trained Uncertainty
Quantification Heads for Hallucination Detection in LLM Outputs" (Shelmanov et al.,
EMNLP 2025). The paper trains a small transformer head on the frozen model's attention
maps to prior tokens and its token probabilities from selected layers, predicting
hallucination per claim. Adapted as a supervised baseline trained on the same folds as
every other detector:

* per response token ``t`` of the CTX pass, ``2L + 2`` features
  (:func:`uq_token_features`): per layer, the share of the token's attention on the
  prompt (the evidence and question) and its largest attention weight on an earlier
  response token (both averaged over heads), then ``log p(y_t)`` and the entropy of
  ``p_t``;
* the head: standardized features → one hidden layer of 32 ReLU units → P(unsafe),
  trained on every token with its response's label, class-balanced by sample weights
  (scikit-learn's ``MLPClassifier``, Adam, minibatches of 256, at most ``max_iter``
  epochs, stopping when the training loss stops improving);
* response score: the mean P(unsafe) over its tokens (higher = riskier).

Tokens beyond the first :data:`MAX_TOKENS` of a response are not used.

Requires: the CTX pass with attentions.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from safescale.detection.registry import SAFE, Detector, DetectorUnavailable, detector

if TYPE_CHECKING:
    from safescale.models.internals import Internals

__all__ = ["MAX_TOKENS", "UQHead", "uq_token_features"]

MAX_TOKENS = 32


def uq_token_features(ctx: Internals) -> list[list[float]]:
    """``[R][2L + 2]`` per-token features (see the module docstring)."""
    import torch

    if ctx.attentions is None:
        raise ValueError("UQ heads need the attention weights of the CTX pass")
    att = ctx.attentions.double()  # [L, H, R, S]
    P = ctx.prompt_length
    L, _, R, _ = att.shape
    ctx_share = att[..., :P].sum(-1).mean(1)  # [L, R]
    prev = torch.zeros(L, R, dtype=torch.float64)
    for t in range(1, R):
        prev[:, t] = att[:, :, t, P : P + t].max(-1).values.mean(1)
    logp = torch.log_softmax(ctx.logits.double(), dim=-1)
    token_logp = logp.gather(-1, ctx.response_ids.view(-1, 1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    features = torch.cat([ctx_share.T, prev.T, token_logp[:, None], entropy[:, None]], dim=1)
    return features.tolist()


def _pack(frame: pd.DataFrame, who: str) -> np.ndarray:
    if "uq_tokens" not in frame.columns:
        raise DetectorUnavailable(f"{who}: 'uq_tokens' was not extracted for this run")
    rows = frame["uq_tokens"].tolist()
    if any(r is None or (isinstance(r, float) and np.isnan(r)) for r in rows):
        raise DetectorUnavailable(f"{who}: some records lack 'uq_tokens'")
    arrays = [np.asarray([np.asarray(t, dtype=np.float64) for t in r]) for r in rows]
    widths = {a.shape[1] for a in arrays if a.ndim == 2}
    if len(widths) != 1 or any(a.ndim != 2 or len(a) == 0 for a in arrays):
        raise DetectorUnavailable(f"{who}: 'uq_tokens' rows are empty or ragged")
    F = widths.pop()
    X = np.zeros((len(arrays), 2 + MAX_TOKENS * F))
    for i, a in enumerate(arrays):
        a = a[:MAX_TOKENS]
        X[i, 0], X[i, 1] = F, len(a)
        X[i, 2 : 2 + a.size] = a.reshape(-1)
    return X


def _tokens(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The token rows of a packed design matrix and the record index of each."""
    F = int(X[0, 0])
    counts = X[:, 1].astype(int)
    rows = [X[i, 2 : 2 + counts[i] * F].reshape(counts[i], F) for i in range(len(X))]
    return np.vstack(rows), np.repeat(np.arange(len(X)), counts)


@detector("uq_heads")
class UQHead(Detector):
    """Token-level MLP head on attention and probability features, mean over tokens.

    Args:
        hidden: units of the hidden layer.
        alpha: L2 penalty.
        max_iter: training epochs at most.
        random_state: seed of the oversampling and the MLP.
    """

    requires = frozenset({"ctx_pass", "attentions"})
    supervised = True

    def __init__(
        self, hidden: int = 32, alpha: float = 1e-3, max_iter: int = 40, random_state: int = 0
    ) -> None:
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.random_state = random_state

    def design_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """``[n, 2 + MAX_TOKENS·F]``: ``F``, the record's token count, then its token
        features row by row (zero padded)."""
        return _pack(frame, self.name)

    def fit(self, X: np.ndarray, y: np.ndarray) -> UQHead:
        X = np.asarray(X, dtype=np.float64)
        unsafe = (np.asarray(y) != SAFE).astype(int)
        if unsafe.min() == unsafe.max():
            raise ValueError(f"{self.name}: training needs both safe and unsafe records")
        tokens, owner = _tokens(X)
        labels = unsafe[owner]
        self.mean_ = tokens.mean(0)
        self.scale_ = tokens.std(0)
        self.scale_[self.scale_ == 0] = 1.0
        Z = (tokens - self.mean_) / self.scale_
        counts = np.bincount(labels, minlength=2).astype(float)
        weight = (len(labels) / (2.0 * counts))[labels]  # class-balanced
        model = MLPClassifier(
            hidden_layer_sizes=(self.hidden,),
            alpha=self.alpha,
            batch_size=256,
            max_iter=self.max_iter,
            random_state=self.random_state,
        )
        with warnings.catch_warnings():  # max_iter bounds the cost; not converged is fine
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(Z, labels, sample_weight=weight)
        self.coefs_ = [c.copy() for c in model.coefs_]
        self.intercepts_ = [b.copy() for b in model.intercepts_]
        self.n_features_in_ = X.shape[1]
        return self

    def _token_proba(self, tokens: np.ndarray) -> np.ndarray:
        z = (tokens - self.mean_) / self.scale_
        h = np.maximum(z @ self.coefs_[0] + self.intercepts_[0], 0.0)
        out = (h @ self.coefs_[1] + self.intercepts_[1])[:, 0]
        return 1.0 / (1.0 + np.exp(-out))

    def risk_score(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        tokens, owner = _tokens(X)
        p = self._token_proba(tokens)
        return np.bincount(owner, weights=p, minlength=len(X)) / np.bincount(
            owner, minlength=len(X)
        )

    def _get_state(self, directory: Path) -> dict[str, Any]:
        return {
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "coefs": [c.tolist() for c in self.coefs_],
            "intercepts": [b.tolist() for b in self.intercepts_],
        }

    def _set_state(self, state: dict[str, Any], directory: Path) -> None:
        self.mean_ = np.asarray(state["mean"])
        self.scale_ = np.asarray(state["scale"])
        self.coefs_ = [np.asarray(c) for c in state["coefs"]]
        self.intercepts_ = [np.asarray(b) for b in state["intercepts"]]
