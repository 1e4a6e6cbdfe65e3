"""Focus: keyword-focused, propagated token uncertainty (Zhang et al., EMNLP 2023).

"Enhancing Uncertainty-Based Hallucination Detection with Stronger Focus"
(arXiv:2311.13230), as LM-Polygraph implements it (``estimators/focus.py``):

1. *Token properties.* Per response token ``t``, the next-token distribution ``p_t`` of
   the CTX pass has its entries below ``p`` (0.01) zeroed, is multiplied by each
   vocabulary entry's IDF and renormalized to ``p̃_t``; the token's uncertainty is
   ``hc_t = −log p̃_t(y_t) + 2^{H₂(p̃_t)}`` (the IDF-corrected surprise plus the
   perplexity of the corrected distribution).
2. *Informative keywords.* Only keyword tokens are scored: tokens of words that carry
   content. The paper tags named entities and nouns with spaCy; no spaCy model installs
   offline here, so a word is a keyword when it holds a digit, or is alphabetic, at
   least three letters long and not a closed-class English word (:data:`STOPWORDS`).
3. *Preceding words (hallucination propagation).* A keyword token inherits the
   uncertainty of the response tokens it attends to:
   ``f_t = hc_t + γ Σ_{j<t} w_{t,j} f_j`` with ``w_{t,·}`` the token's attention to the
   earlier response tokens (mean over layers and heads of the CTX pass), normalized to
   sum 1; non-keyword tokens keep ``f_t = hc_t`` and no weight (γ = 0.9).

Response score: the mean of ``f_t`` over keyword tokens (higher = riskier; NaN — and
the detector unavailable for that record — when the response has no keyword).

IDF: over the run's evidence corpus (each passage a document, tokenized with the
model's tokenizer): ``idf(v) = log((N + 1) / (df(v) + 1)) + 1``; the paper uses 1M
RedPajama documents, which are not available offline.

Requires: the CTX pass with attentions and the corpus IDF (``token_idf``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from safescale.detection.baselines._base import ScalarScoreDetector
from safescale.detection.registry import detector

if TYPE_CHECKING:
    from safescale.models.internals import Internals

__all__ = [
    "FOCUS_GAMMA",
    "FOCUS_P",
    "STOPWORDS",
    "Focus",
    "corpus_idf",
    "focus_score",
    "focus_token_inputs",
    "keyword_mask",
]

FOCUS_P = 0.01
FOCUS_GAMMA = 0.9

#: Closed-class English words (determiners, pronouns, prepositions, conjunctions,
#: auxiliaries, common adverbs) that never count as keywords.
_STOPWORD_TEXT = (
    "a about above after again against all am an and any are as at be because been before "
    "being below between both but by can could did do does doing down during each few for "
    "from further had has have having he her here hers herself him himself his how i if "
    "in into is it its itself just me more most my myself no nor not now of off on once "
    "only or other our ours ourselves out over own same she should so some such than that "
    "the their theirs them themselves then there these they this those through to too "
    "under until up very was we were what when where which while who whom why will with "
    "would you your yours yourself yourselves also may might must shall than thus yes per "
    "via"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*")


def _is_keyword(word: str) -> bool:
    if any(ch.isdigit() for ch in word):
        return True
    return word.isalpha() and len(word) >= 3 and word.lower() not in STOPWORDS


def keyword_mask(pieces: Sequence[str]) -> np.ndarray:
    """``[R]`` bool: which response tokens (their decoded texts, in order) belong to a
    keyword word. Words are the maximal alphanumeric runs (with inner ``-`` or ``'``) of
    the joined text; a token belongs to every word its characters overlap."""
    text = "".join(pieces)
    starts = np.cumsum([0, *[len(p) for p in pieces]])
    mask = np.zeros(len(pieces), dtype=bool)
    for match in _WORD.finditer(text):
        if not _is_keyword(match.group()):
            continue
        lo, hi = match.span()
        for t in range(len(pieces)):
            if starts[t] < hi and starts[t + 1] > lo:
                mask[t] = True
    return mask


def corpus_idf(token_lists: Iterable[Sequence[int]], vocab_size: int) -> np.ndarray:
    """``[V]`` smoothed IDF ``log((N + 1) / (df + 1)) + 1`` of each vocabulary id over
    documents given as token-id lists."""
    df = np.zeros(vocab_size, dtype=np.float64)
    n = 0
    for ids in token_lists:
        n += 1
        unique = np.unique(np.asarray(list(ids), dtype=np.int64))
        unique = unique[(unique >= 0) & (unique < vocab_size)]
        df[unique] += 1.0
    return np.log((n + 1.0) / (df + 1.0)) + 1.0


def focus_token_inputs(
    ctx: Internals, idf: np.ndarray, pieces: Sequence[str], p: float = FOCUS_P
) -> dict[str, list]:
    """The per-token inputs of :func:`focus_score` from one CTX pass with attentions.

    Returns:
        ``hc`` ``[R]`` IDF-corrected token uncertainty, ``keyword`` ``[R]`` bools and
        ``prev_attn`` ``[R][R]`` (row ``t``: attention of prediction row ``t`` to the
        positions of response tokens ``j < t``, mean over layers and heads; zero
        elsewhere).
    """
    import torch

    if ctx.attentions is None:
        raise ValueError("Focus needs the attention weights of the CTX pass")
    probs = torch.softmax(ctx.logits.double(), dim=-1)  # [R, V]
    V = probs.shape[-1]
    weights = torch.ones(V, dtype=torch.float64)
    n = min(V, len(idf))
    weights[:n] = torch.as_tensor(np.asarray(idf[:n], dtype=np.float64))
    if n < V:  # ids beyond the IDF table (added special tokens): the rarest weight
        weights[n:] = float(np.max(idf)) if len(idf) else 1.0
    corrected = torch.where(probs < p, torch.zeros((), dtype=torch.float64), probs) * weights
    corrected = corrected / corrected.sum(-1, keepdim=True).clamp(min=1e-300)
    logc = torch.log2(corrected.clamp(min=1e-300))
    entropy2 = -(torch.where(corrected > 0, corrected * logc, torch.zeros(()))).sum(-1)
    target = corrected.gather(-1, ctx.response_ids.view(-1, 1)).squeeze(-1)
    hc = -torch.log(target + 1e-10) + torch.exp2(entropy2)
    P, R = ctx.prompt_length, int(ctx.response_ids.numel())
    att = ctx.attentions.double().mean(dim=(0, 1))  # [R, S]
    prev = torch.zeros(R, R, dtype=torch.float64)
    for t in range(1, R):
        prev[t, :t] = att[t, P : P + t]
    return {
        "hc": hc.tolist(),
        "keyword": keyword_mask(pieces).tolist(),
        "prev_attn": prev.tolist(),
    }


def focus_score(
    hc: Sequence[float],
    keyword: Sequence[bool],
    prev_attn: Sequence[Sequence[float]],
    gamma: float = FOCUS_GAMMA,
) -> float:
    """Mean propagated uncertainty over keyword tokens (NaN without keywords)."""
    hc_arr = np.asarray(hc, dtype=np.float64)
    kw = np.asarray(keyword, dtype=bool)
    if not kw.any():
        return math.nan
    att = np.asarray(prev_attn, dtype=np.float64)
    focus = np.zeros_like(hc_arr)
    for t in range(hc_arr.size):
        value = hc_arr[t]
        if kw[t] and t > 0:
            row = att[t, :t]
            total = row.sum()
            if total > 0:
                value += gamma * float((row / total) @ focus[:t])
        focus[t] = value
    return float(focus[kw].mean())


@detector("focus")
class Focus(ScalarScoreDetector):
    """Focus (Zhang et al. 2023): keyword-focused propagated uncertainty (higher =
    riskier)."""

    requires = frozenset({"ctx_pass", "attentions", "token_idf"})
    column = "focus"
