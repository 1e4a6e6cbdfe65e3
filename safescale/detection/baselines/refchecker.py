"""RefChecker-style claim checking against the reference evidence (Hu et al., 2024).

"RefChecker: Reference-based Fine-grained Hallucination Checker and Benchmark for Large
Language Models" (arXiv:2405.14486). RefChecker extracts claim triplets from a response
with an extractor LLM and labels each against the reference as *entailment*,
*neutral* or *contradiction* with a checker (an LLM or an NLI model); the response is
as risky as its share of non-entailed claims.

Here, with the run's own model as the checker (no NLI model installs offline):

* **Extractor** (:func:`extract_claims`): the response without its answer cue and option
  letter, split into sentences; each sentence becomes one claim phrased with the
  question it answers (``"<question> — <sentence>"``), since a multiple-choice answer
  on its own asserts nothing. The triplet extractor of the paper needs a generative
  model far larger than the bundled ones; a sentence is the claim unit of its
  sentence-level variant.
* **Checker** (:func:`check_claims`): the prompt :data:`CHECK` (the reference — the
  response's evidence block, without the question — and the claim), the three labels
  read as continuations after the answer cue and normalized by PMI against the neutral
  prompt (as the agentic critic's judgements are), then softmaxed over the labels.
* **Score** (higher = riskier): the mean over claims of ``1 − p(entailed)``.

A response whose prompt held no evidence has no reference: its score is NaN and the
detector reports itself unavailable for such records.

Requires: the checker's LM calls (``claim_check``), made when the response is recorded.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from safescale.detection.baselines._base import ScalarScoreDetector
from safescale.detection.registry import detector

if TYPE_CHECKING:
    from safescale.models.backend import LanguageModel

__all__ = [
    "CHECK",
    "CHECK_LABELS",
    "REFCHECK_PROMPT_VERSION",
    "RefChecker",
    "check_claims",
    "check_response",
    "extract_claims",
    "reference_of",
]

#: Bump when the checker prompt or labels change (part of the stored inputs' key).
REFCHECK_PROMPT_VERSION = 1
CHECK = (
    "Reference:\n{reference}\n\nClaim: {claim}\n\n"
    "Is the claim entailed by the reference, contradicted by it, or neutral (the reference "
    "does not say)? Answer entailed, contradicted or neutral."
)
CHECK_LABELS = ("entailed", "contradicted", "neutral")
_ANSWER_PREFIX = re.compile(r"^\s*(?:answer\s*:)?\s*(?:\(?[A-Z]\)|[A-Z][.:])?\s*", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def reference_of(message: str, message_noctx: str) -> str:
    """The evidence of an answer prompt: ``message`` without its NOCTX part (the
    question, which safescale's prompts put after the evidence), stripped; "" when the
    prompt held no evidence or does not contain its NOCTX prompt."""
    if message == message_noctx or message.count(message_noctx) != 1:
        return ""
    return message.replace(message_noctx, "\n").strip()


def _question_of(message_noctx: str) -> str:
    text = message_noctx.strip()
    if text.startswith("Question:"):
        text = text[len("Question:") :]
    return text.strip().split("\n", 1)[0].strip()


def extract_claims(message_noctx: str, response: str) -> list[str]:
    """The claims of a response: its sentences (answer cue and option letter removed),
    each phrased with the question it answers."""
    body = _ANSWER_PREFIX.sub("", response.strip(), count=1).strip()
    sentences = [s.strip() for s in _SENTENCE.split(body) if s.strip()]
    question = _question_of(message_noctx)
    return [f"{question} — {s}" if question else s for s in sentences]


def check_claims(lm: LanguageModel, reference: str, claims: list[str]) -> np.ndarray:
    """``[n_claims, 3]`` probabilities of (entailed, contradicted, neutral)."""
    from safescale.models.backend import NEUTRAL_MESSAGE

    if not claims:
        return np.zeros((0, len(CHECK_LABELS)))
    prompts = [CHECK.format(reference=reference, claim=c) for c in claims]
    scored = lm.score_continuations(prompts, list(CHECK_LABELS)).logprob
    prior = lm.score_continuations([NEUTRAL_MESSAGE], list(CHECK_LABELS)).logprob[0]
    pmi = scored - prior[None]
    pmi = pmi - pmi.max(1, keepdims=True)
    return np.exp(pmi) / np.exp(pmi).sum(1, keepdims=True)


def check_response(
    lm: LanguageModel, message: str, message_noctx: str, response: str
) -> dict[str, object]:
    """The stored RefChecker inputs of one response: its claims' label probabilities
    and the score (NaN without reference or claims)."""
    reference = reference_of(message, message_noctx)
    claims = extract_claims(message_noctx, response) if reference else []
    probs = check_claims(lm, reference, claims) if claims else np.zeros((0, 3))
    score = float(np.mean(1.0 - probs[:, 0])) if len(probs) else float("nan")
    return {
        "prompt": REFCHECK_PROMPT_VERSION,
        "n_claims": len(claims),
        "probs": probs.round(6).tolist(),
        "refcheck": score,
    }


@detector("refchecker")
class RefChecker(ScalarScoreDetector):
    """Share of the response's claims the checker does not find entailed by the
    evidence (higher = riskier)."""

    requires = frozenset({"claim_check"})
    column = "refcheck"
