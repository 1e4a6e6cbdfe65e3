"""How an answer is read from the model: the answer formulations.

Two families, as OLMES and lm-evaluation-harness define them:

* **MCF** (multiple-choice formulation): the option letters are scored at the answer
  position (``"Answer:"`` then `` A``, `` B``, ...).

  - ``letter``: the raw letter logits of the prompt as shown.
  - ``letter_cyclic``: the options are shown in the ``n`` cyclic orderings of their
    canonical (text-sorted) order, letters fixed; each option's score is its mean
    log-probability over the orderings (log-prob space). Every option is seen once at
    every position, which cancels the position prior at ``n`` passes, and the scores
    are equivariant under any permutation of the item's options.
  - ``letter_pride``: PriDe (Zheng et al., ICLR 2024): the model's prior over option
    *positions* is estimated once per model x corpus on a few calibration items with
    all cyclic orderings, then divided out of the single-pass letter probabilities:
    ``score_j = log p(letter_j) - log prior_j``.

* **CF** (cloze formulation): the prompt holds the evidence and the question but no
  option list (:data:`~safescale.agents.prompts.CLOZE`), and each option's *text* is
  scored as its continuation after the answer cue (``sum_t log p(c_t | prompt,
  c_<t)``), normalized:

  - ``cloze_none``: the summed log-probability;
  - ``cloze_token``: divided by the number of tokens;
  - ``cloze_char``: divided by the number of characters (lm-eval's ``acc_norm``);
  - ``cloze_pmi``: minus the log-probability of the same text after a neutral prompt
    (:data:`~safescale.models.NEUTRAL_MESSAGE`), i.e. ``log p(text | prompt) -
    log p(text | neutral)`` (lm-eval's ``acc_mutual_info``): an option the model likes
    whatever the question gains nothing from that.

Every formulation returns one log-space score per option in the item's letter order;
their softmax is the option distribution that confidence, calibration and the
evidence-calibrated softmax use. The frozen response text is always
``Answer: X) option text``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from safescale.agents import prompts
from safescale.corpora import Item, Passage
from safescale.models import NEUTRAL_MESSAGE

if TYPE_CHECKING:
    from safescale.agents.lmcache import CachedLM
    from safescale.models import LanguageModel

__all__ = [
    "CALIBRATED_FORMULATIONS",
    "FORMULATIONS",
    "CyclicScores",
    "Formulation",
    "OptionScores",
    "answer_prompt",
    "cyclic_letter_logprobs",
    "estimate_position_prior",
    "log_softmax",
    "message_for",
    "read_options",
]

Formulation = Literal[
    "letter",
    "letter_cyclic",
    "letter_pride",
    "cloze_none",
    "cloze_token",
    "cloze_char",
    "cloze_pmi",
]
FORMULATIONS: tuple[str, ...] = get_args(Formulation)
#: Formulations that need a per-model x corpus calibration before the study.
CALIBRATED_FORMULATIONS = frozenset({"letter_pride"})


@dataclass(frozen=True)
class OptionScores:
    """The scores of one item's options under one formulation.

    Attributes:
        formulation: the formulation that produced them.
        scores: log-space score per option, in the item's letter order.
        message: the user turn as shown in the default option order (the prompt the
            answer is recorded under).
        detail: what the scores were built from (per-ordering choices, cloze
            log-probabilities, PMI priors, ...), for the step record.
    """

    formulation: str
    scores: list[float]
    message: str
    detail: dict = field(default_factory=dict)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax."""
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


@dataclass(frozen=True)
class CyclicScores:
    """Letter log-probabilities under the cyclic orderings of an item's options.

    The orderings rotate the options sorted by text (a canonical order), so the set of
    prompts depends only on the option texts, not on the order the item lists them in:
    every option appears once at every position, and any permutation of the item's
    options permutes the result.

    Attributes:
        logprobs: ``[n, n]``: row ``k`` is the log-softmax over the letters (positions)
            of the ``k``-th ordering.
        orders: ``orders[k][j]`` is the item index of the option shown at position
            ``j`` of ordering ``k``.
    """

    logprobs: np.ndarray
    orders: list[list[int]]

    def by_option(self, log_prior: np.ndarray | None = None) -> np.ndarray:
        """``[n, n]``: row ``k``, column ``i`` = log-prob of item option ``i`` in
        ordering ``k`` (minus ``log_prior`` of the position it was shown at, if given)."""
        lp = self.logprobs if log_prior is None else self.logprobs - log_prior
        out = np.empty_like(lp)
        for k, order in enumerate(self.orders):
            for j, i in enumerate(order):
                out[k, i] = lp[k, j]
        return out

    def position_prior(self) -> np.ndarray:
        """This prompt's prior over positions: the softmax of each position's mean
        log-probability over the orderings (the option contents average out)."""
        return np.exp(log_softmax(self.logprobs.mean(axis=0)))


def cyclic_letter_logprobs(
    lm: LanguageModel | CachedLM,
    item: Item,
    passages: Sequence[Passage],
    summary: str | None = None,
) -> CyclicScores:
    """Score the letters of every cyclic ordering of the item's options (``n`` passes,
    one batch); see :class:`CyclicScores`."""
    letters = item.letters
    n = len(letters)
    canonical = sorted(range(n), key=lambda i: (item.options[letters[i]], letters[i]))
    orders = [[canonical[(j + k) % n] for j in range(n)] for k in range(n)]
    messages = [
        prompts.answer_message(item, passages, summary, order=[letters[i] for i in order])
        for order in orders
    ]
    return CyclicScores(log_softmax(lm.score_options(messages, letters)), orders)


def estimate_position_prior(cyclic: Sequence[CyclicScores]) -> dict[str, list[float]]:
    """PriDe's position prior from the cyclic letter scores of calibration prompts: the
    mean of the prompts' :meth:`CyclicScores.position_prior` (probability space), per
    number of options.

    Returns:
        ``{str(n_options): prior over positions}``.
    """
    groups: dict[int, list[np.ndarray]] = {}
    for scores in cyclic:
        prior = scores.position_prior()
        groups.setdefault(len(prior), []).append(prior)
    out = {}
    for n, priors in groups.items():
        mean = np.mean(priors, axis=0)
        out[str(n)] = [float(x) for x in mean / mean.sum()]
    return out


def answer_prompt(formulation: str) -> prompts.Prompt:
    """The prompt template a formulation reads answers from: the lettered
    :data:`~safescale.agents.prompts.ANSWER` for ``letter*``, the option-free
    :data:`~safescale.agents.prompts.CLOZE` for ``cloze_*``."""
    return prompts.CLOZE if formulation.startswith("cloze_") else prompts.ANSWER


def message_for(
    formulation: str, item: Item, passages: Sequence[Passage], summary: str | None = None
) -> str:
    """The user turn a formulation reads the answer from (see :func:`answer_prompt`)."""
    if formulation.startswith("cloze_"):
        return prompts.cloze_message(item, passages, summary)
    return prompts.answer_message(item, passages, summary)


def read_options(
    lm: LanguageModel | CachedLM,
    item: Item,
    passages: Sequence[Passage],
    summary: str | None,
    formulation: str,
    *,
    position_prior: Mapping[str, Sequence[float]] | None = None,
) -> OptionScores:
    """Score an item's options under ``formulation`` (see the module docstring).

    A model that declares the ``formulations`` it can serve (a served model, see
    :mod:`safescale.models.served.probe`) is refused any other.

    ``letter_pride`` needs ``position_prior`` (from :func:`estimate_position_prior`);
    for an item whose number of options has no prior it falls back to
    ``letter_cyclic`` for that item and says so in ``detail``.
    """
    letters = item.letters
    served = lm.formulations  # what a served model's probe allows (None: all)
    if served is not None and formulation not in served:
        raise ValueError(
            f"model {lm.name!r} cannot serve the {formulation} formulation "
            f"(it serves {', '.join(sorted(served))})"
        )
    message = message_for(formulation, item, passages, summary)
    if formulation == "letter":
        logits = lm.score_options([message], letters)[0]
        return OptionScores(formulation, [float(x) for x in logits], message)
    if formulation == "letter_pride":
        prior = (position_prior or {}).get(str(len(letters)))
        if prior is not None:
            lp = log_softmax(lm.score_options([message], letters)[0])
            scores = log_softmax(lp - np.log(np.asarray(prior)))
            return OptionScores(
                formulation,
                [float(x) for x in scores],
                message,
                {"letter_logprobs": [float(x) for x in lp], "position_prior": list(prior)},
            )
        formulation_used, fallback = "letter_cyclic", True
    elif formulation == "letter_cyclic":
        formulation_used, fallback = "letter_cyclic", False
    else:
        formulation_used, fallback = formulation, False
    if formulation_used == "letter_cyclic":
        by_original = cyclic_letter_logprobs(lm, item, passages, summary).by_option()
        picks = [letters[int(np.argmax(row))] for row in by_original]
        detail = {"ordering_choices": picks, "orderings_agree": len(set(picks)) == 1}
        if fallback:
            detail["fallback"] = f"no position prior for {len(letters)} options: cyclic"
        return OptionScores(
            formulation, [float(x) for x in by_original.mean(axis=0)], message, detail
        )
    if not formulation.startswith("cloze_"):
        raise ValueError(f"unknown answer formulation {formulation!r}; known: {FORMULATIONS}")
    texts = [item.options[letter] for letter in letters]
    cloze = lm.score_continuations([message], [texts])
    logprob = cloze.logprob[0]
    detail: dict = {"cloze_logprob": [float(x) for x in logprob]}
    if formulation == "cloze_none":
        scores = logprob
    elif formulation == "cloze_token":
        scores = logprob / cloze.n_tokens[0]
    elif formulation == "cloze_char":
        scores = logprob / cloze.n_chars[0]
    elif formulation == "cloze_pmi":
        neutral = lm.score_continuations([NEUTRAL_MESSAGE], [texts]).logprob[0]
        detail["neutral_logprob"] = [float(x) for x in neutral]
        scores = logprob - neutral
    else:
        raise ValueError(f"unknown answer formulation {formulation!r}; known: {FORMULATIONS}")
    return OptionScores(formulation, [float(x) for x in scores], message, detail)
