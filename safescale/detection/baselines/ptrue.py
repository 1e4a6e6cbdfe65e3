"""P(True) baseline: the model judges its own answer.

Prompt (version :data:`PTRUE_PROMPT_VERSION` = 2): the answer's own token sequence —
``prompt_ids(record.message)`` (the answer prompt in the model's chat or plain template)
followed by the response ids (``record.response`` tokenized on its own, exactly the
sequence the CTX teacher-forced pass reads) — then the question suffix
:data:`PTRUE_SUFFIX` and the target :data:`PTRUE_TARGET`, each tokenized on its own
without special tokens and concatenated as ids::

    <answer prompt><response>
    Is the answer above true or false? Answer: True

Score (higher = riskier): ``ptrue_nll = −log p(" True" | answer prompt, response,
suffix)`` (summed over the tokens of " True"). Because the prefix is the CTX pass's own
sequence, the shared answer pass gets it by extending that pass's KV cache by the
suffix (:func:`ptrue_nll_from`, a few tokens); without it it is one teacher-forced pass
over the whole sequence (:func:`ptrue_nll_for`). Version 1 (a separate user turn
quoting question and answer, ``"The possible answer is:"`` cue) is no longer computed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from safescale.detection.baselines._base import ScalarScoreDetector
from safescale.detection.registry import detector
from safescale.rundir import ResponseRecord

if TYPE_CHECKING:
    from collections.abc import Sequence

    from safescale.models.backend import LanguageModel, PromptPass

__all__ = [
    "PTRUE_PROMPT_VERSION",
    "PTRUE_SUFFIX",
    "PTRUE_TARGET",
    "PTrue",
    "ptrue_ids",
    "ptrue_nll",
    "ptrue_nll_for",
    "ptrue_nll_from",
]

#: Bump when the P(True) prompt layout changes (part of its cache and store keys).
PTRUE_PROMPT_VERSION = 2
PTRUE_SUFFIX = "\nIs the answer above true or false? Answer:"
PTRUE_TARGET = " True"


def ptrue_ids(lm: LanguageModel, response_ids: Sequence[int]) -> tuple[list[int], int]:
    """The ids after the answer prompt (response + suffix + target) and the number of
    target ids at their end."""
    tok = lm.tokenizer
    suffix = list(tok(PTRUE_SUFFIX, add_special_tokens=False)["input_ids"])
    target = list(tok(PTRUE_TARGET, add_special_tokens=False)["input_ids"])
    return [int(t) for t in response_ids] + suffix + target, len(target)


def ptrue_nll(lm: LanguageModel, record: ResponseRecord) -> float:
    """``−log p(" True")`` after the suffix, from one teacher-forced pass."""
    return ptrue_nll_for(lm, record.message, record.response)


def ptrue_nll_for(lm: LanguageModel, message: str, response: str) -> float:
    """:func:`ptrue_nll` of an answer prompt and its response (one pass from scratch)."""
    response_ids = list(lm.tokenizer(response, add_special_tokens=False)["input_ids"])
    if not response_ids:
        raise ValueError("P(True) needs a non-empty response")
    ids, n_target = ptrue_ids(lm, response_ids)
    return -lm.sequence_logprob(message, ids, n_target)


def ptrue_nll_from(lm: LanguageModel, state: PromptPass, response_ids: Sequence[int]) -> float:
    """:func:`ptrue_nll_for` from the answer's prompt pass ``state`` after
    :meth:`~safescale.models.LanguageModel.internals_from` fed it the response: only the
    last response token, the suffix and the target but its last are fed (``state`` is
    extended in place)."""
    ids, n_target = ptrue_ids(lm, response_ids)
    return -lm.sequence_logprob_from(state, ids, n_target)


@detector("ptrue")
class PTrue(ScalarScoreDetector):
    """Negative log-probability that the model calls its answer true (higher = riskier)."""

    requires = frozenset({"ptrue_pass"})
    column = "ptrue_nll"
