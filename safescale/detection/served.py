"""Black-box detection inputs of a served model (no weights in this process).

ECRT, the hidden-state probe, the logit lens, attention features (Lookback Lens, Focus,
ReDeEP, UQ heads) and EigenScore read hidden states or attention: for a served model
they need the same weights loaded locally (``whitebox:`` in the model's config entry),
and without it they are reported unavailable for that model in one line. The
black-box detectors run from what the server returns:

* ``perplexity`` (``nll_mean``), ``msp_seq``, ``msp_step``, ``mte``, ``pmi``,
  ``length``: the frozen response's per-token log-probs after the CTX prompt (and the
  NOCTX prompt for ``pmi``), with the top alternatives per position
  (:meth:`~safescale.models.served.openai.OpenAICompletionsModel.token_scores`: echoed
  prompt log-probs when the probe found them aligned, else one greedy step per token).
  ``msp_step`` reads the largest alternative (exact). ``mte`` is *estimated* from the
  top ``K`` alternatives: their entropy terms plus the remaining mass spread evenly
  over the rest of the vocabulary (the largest entropy that mass can have), so it
  upper-bounds the full-vocabulary entropy;
* ``ptrue``: ``−log p(" True")`` after the answer prompt, the response and the P(True)
  suffix, the same text the in-process pass reads;
* ``refchecker``: its claim labels are short continuations;
* ``ln_entropy``, ``selfcheck``: the frozen samples (no model call).

Chat-only endpoints return no log-probs of given text: only the sample-based
detectors run on them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from safescale.detection.baselines.ptrue import PTRUE_SUFFIX, PTRUE_TARGET
from safescale.detection.registry import get_detector

__all__ = [
    "BLACKBOX_INPUTS",
    "SERVED_COLUMNS",
    "served_pass_columns",
    "served_ptrue_nll",
    "split_servable",
]

#: Inputs a served model provides without weights (through its log-probs and samples).
BLACKBOX_INPUTS = frozenset({"ctx_pass", "noctx_pass", "samples", "ptrue_pass", "claim_check"})
#: Columns of the pass group computed from served log-probs.
SERVED_COLUMNS = frozenset({"nll_mean", "msp_seq", "msp_step", "mte", "pmi", "length"})
_SAMPLE_COLUMNS = frozenset({"ln_entropy", "selfcheck"})
_LOGPROB_COLUMNS = SERVED_COLUMNS | {"ptrue_nll", "refcheck"}


def split_servable(
    names: Iterable[str], *, continuations: str | None, model: str, kind: str
) -> tuple[list[str], dict[str, str]]:
    """The detectors a served model without ``whitebox:`` can run, and why the others
    cannot (one reason per detector).

    Args:
        names: the requested detectors.
        continuations: how the model scores given text (None: it cannot, e.g. chat).
        model: the model's name (messages).
        kind: its kind (messages).
    """
    usable: list[str] = []
    unavailable: dict[str, str] = {}
    for name in names:
        cls = get_detector(name)
        column = getattr(cls, "column", "")
        if not cls.requires:
            usable.append(name)
        elif cls.requires - BLACKBOX_INPUTS or column not in _LOGPROB_COLUMNS | _SAMPLE_COLUMNS:
            unavailable[name] = (
                f"needs the weights (hidden states, logit lens or attention); model {model!r} "
                f"is served (kind: {kind}) and names no whitebox:"
            )
        elif column in _LOGPROB_COLUMNS and continuations is None:
            unavailable[name] = (
                f"needs log-probs of the response's tokens, which model {model!r} "
                f"(kind: {kind}) cannot return"
            )
        else:
            usable.append(name)
    return usable, unavailable


def served_pass_columns(lm: Any, record: Any) -> dict[str, Any]:
    """The pass-group columns of one frozen record from the served model's log-probs
    (see the module docstring)."""
    ctx = lm.token_scores(lm.prompt_text(record.message), record.response)
    noctx = lm.token_scores(lm.prompt_text(record.message_noctx), record.response)
    lp = np.asarray(ctx.logprobs, dtype=np.float64)
    lp0 = np.asarray(noctx.logprobs, dtype=np.float64)
    vocab = len(lm.tokenizer) if lm.tokenizer is not None else None
    top1 = [max([*row.values(), value]) for row, value in zip(ctx.top, lp, strict=True)]
    # token spans can differ (a merged boundary token): then per-token means
    pmi = float((lp - lp0).mean()) if len(lp) == len(lp0) else float(lp.mean() - lp0.mean())
    return {
        "nll_mean": float(-lp.mean()),
        "msp_seq": float(-lp.sum()),
        "msp_step": float(1.0 - np.mean(np.exp(top1))),
        "mte": float(
            np.mean(
                [
                    _entropy_estimate(row, value, vocab)
                    for row, value in zip(ctx.top, lp, strict=True)
                ]
            )
        ),
        "pmi": pmi,
        "length": float(len(lp)),
        "served_censored": int(ctx.censored + noctx.censored),
    }


def _entropy_estimate(top: dict[str, float], value: float, vocab: int | None) -> float:
    """Entropy (nats) from the top alternatives plus the remaining mass spread evenly."""
    logps = list(top.values()) or [value]
    p = np.exp(np.asarray(logps, dtype=np.float64))
    known = float(-(p * np.asarray(logps)).sum())
    tail = max(0.0, 1.0 - float(p.sum()))
    if tail <= 1e-12:
        return known
    rest = max(1, (vocab or len(p) + 1) - len(p))
    return known + tail * (math.log(rest) - math.log(tail))


def served_ptrue_nll(lm: Any, record: Any) -> float:
    """``−log p(" True")`` after the answer prompt, the response and the suffix."""
    prefix = lm.prompt_text(record.message) + record.response + PTRUE_SUFFIX
    value, _ = lm.score_text(prefix, PTRUE_TARGET)
    return float(-value)
