"""Choosing how a study reads answers: held-out calibration items and ``auto``.

Some answer formulations need a calibration per model x corpus before the study runs:
``auto`` (which formulation to use) and ``letter_pride`` (the position prior). Both use
the same **calibration items**: whole ``evidence_id`` groups drawn in a seeded order
until at least ``answer.calibration_items`` items are taken (never more than half of the
corpus). They depend only on the corpus, the seed and that size, and they are removed
from the study: a calibration item is never scored in the study, whatever ``limit``.

On each calibration item the model sees two prompts, ``closed_book`` (no evidence) and
``clean_evidence`` (the item's clean set), and every candidate formulation is scored on
both. Per candidate: accuracy with and without evidence, **evidence sensitivity** (share
of items whose answer changes between the two prompts), the share of the most chosen
option position, and for the letter formulations the agreement of the answer across the
cyclic orderings of the options. ``letter_pride`` is evaluated with a leave-one-item-out
prior, so its calibration accuracy is not fitted to the item it is scored on.

**The ``auto`` rule**: candidates that are position-locked on the calibration prompts
(at least :data:`~safescale.experiments.validity.POSITION_LOCK_SHARE` of their answers
on one position) are set aside unless every candidate is; then the candidate with the
best accuracy *with evidence*; among candidates within ``answer.tie_margin`` of it, the
one whose answers move most between no evidence and clean evidence; then the fixed
preference order of :data:`PREFERENCE`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from safescale.agents import prompts
from safescale.agents.answering import (
    FORMULATIONS,
    cyclic_letter_logprobs,
    estimate_position_prior,
    log_softmax,
)
from safescale.corpora import Corpus, Item
from safescale.experiments.validity import POSITION_LOCK_SHARE
from safescale.models import NEUTRAL_MESSAGE

if TYPE_CHECKING:
    from safescale.agents.lmcache import CachedLM

__all__ = ["PREFERENCE", "calibrate", "calibration_item_ids", "needs_calibration"]

#: Tie-break order of ``auto`` (after accuracy and evidence sensitivity).
PREFERENCE = (
    "cloze_pmi",
    "cloze_token",
    "cloze_char",
    "cloze_none",
    "letter_pride",
    "letter_cyclic",
    "letter",
)
assert set(PREFERENCE) == set(FORMULATIONS)


def needs_calibration(formulation: str) -> bool:
    """Whether a study with this ``answer.formulation`` holds calibration items out."""
    return formulation in ("auto", "letter_pride")


def calibration_item_ids(corpus: Corpus, size: int, seed: int) -> list[str]:
    """The held-out calibration items of a corpus (whole ``evidence_id`` groups, seeded).

    At most half of the corpus's items are taken, so a study always keeps the rest.
    """
    groups: dict[str, list[str]] = {}
    for item in corpus.items:
        groups.setdefault(item.evidence_id or item.id, []).append(item.id)
    names = sorted(groups)
    rng = np.random.default_rng([seed, len(names), 7919])
    order = [names[i] for i in rng.permutation(len(names))]
    cap = len(corpus.items) // 2
    taken: list[str] = []
    for name in order:
        if len(taken) >= size:
            break
        if len(taken) + len(groups[name]) > cap:
            continue
        taken.extend(groups[name])
    return sorted(taken)


def _prompt_scores(
    lm: CachedLM, item: Item, passages: Sequence, *, cloze: bool = True
) -> dict[str, Any]:
    """Everything the candidates need for one prompt: the letter log-probs as shown,
    under the cyclic orderings, and (``cloze``) the cloze log-probs with their neutral
    priors."""
    message = prompts.answer_message(item, passages)
    out: dict[str, Any] = {
        "letter": log_softmax(lm.score_options([message], item.letters)[0]),
        "cyclic": cyclic_letter_logprobs(lm, item, passages),
    }
    if cloze:
        texts = [item.options[letter] for letter in item.letters]
        scores = lm.score_continuations([prompts.cloze_message(item, passages)], [texts])
        out.update(
            {
                "logprob": scores.logprob[0],
                "n_tokens": scores.n_tokens[0],
                "n_chars": scores.n_chars[0],
                "neutral": lm.score_continuations([NEUTRAL_MESSAGE], [texts]).logprob[0],
            }
        )
    return out


def _choices(data: dict[str, Any], prior: np.ndarray | None) -> dict[str, tuple[int, bool | None]]:
    """Chosen option index (and whether the orderings agree, for letters) per candidate."""
    cyclic = data["cyclic"]
    raw = cyclic.by_option()
    out: dict[str, tuple[int, bool | None]] = {
        "letter": (int(np.argmax(data["letter"])), len({int(np.argmax(r)) for r in raw}) == 1),
        "letter_cyclic": (int(np.argmax(raw.mean(axis=0))), None),
    }
    if "logprob" in data:
        out.update(
            {
                "cloze_none": (int(np.argmax(data["logprob"])), None),
                "cloze_token": (int(np.argmax(data["logprob"] / data["n_tokens"])), None),
                "cloze_char": (int(np.argmax(data["logprob"] / data["n_chars"])), None),
                "cloze_pmi": (int(np.argmax(data["logprob"] - data["neutral"])), None),
            }
        )
    if prior is not None:
        log_prior = np.log(prior)
        debiased = cyclic.by_option(log_prior)
        out["letter_pride"] = (
            int(np.argmax(data["letter"] - log_prior)),
            len({int(np.argmax(r)) for r in debiased}) == 1,
        )
    return out


def calibrate(
    lm: CachedLM,
    corpus: Corpus,
    item_ids: Sequence[str],
    *,
    formulation: str,
    tie_margin: float,
    allowed: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Calibrate the answer formulation of one model on one corpus.

    Args:
        lm: the (cached) model.
        corpus: the corpus.
        item_ids: the calibration items (:func:`calibration_item_ids`).
        formulation: the config's ``answer.formulation`` (``auto`` or a fixed one).
        tie_margin: accuracy margin within which ``auto`` treats candidates as tied.
        allowed: the formulations the model can serve (a served model's probe may
            restrict it to the letter formulations); None: all. ``auto`` considers
            only these, and the record says which were left out and why.

    Returns:
        A JSON-ready record: ``requested``, ``chosen``, ``position_prior`` (per number of
        options, when the letter formulations were scored), ``calibration_items``,
        ``candidates`` (per formulation: accuracy without/with evidence, evidence
        sensitivity, top position share, orderings agreement, n) and ``rule``.
    """
    items = [corpus.item(i) for i in item_ids]
    if not items:
        raise ValueError(
            f"corpus {corpus.name!r} has too few items to hold any out for calibration; "
            "set answer.formulation to a fixed formulation"
        )
    if allowed is not None and formulation != "auto" and formulation not in allowed:
        raise ValueError(
            f"formulation {formulation!r} cannot be served by model {lm.name!r}; "
            f"it serves {sorted(allowed)}"
        )
    cloze = allowed is None or any(name.startswith("cloze_") for name in allowed)
    data = []
    for item in items:
        clean = [corpus.passage(pid) for pid in item.evidence.clean]
        data.append(
            (
                item,
                _prompt_scores(lm, item, [], cloze=cloze),
                _prompt_scores(lm, item, clean, cloze=cloze),
            )
        )
    cyclic_all = [d["cyclic"] for _, closed, clean in data for d in (closed, clean)]
    prior_sum: dict[int, np.ndarray] = {}
    prior_count: dict[int, int] = {}
    per_prompt_priors = []
    for scores in cyclic_all:
        prior = scores.position_prior()
        per_prompt_priors.append(prior)
        n = len(prior)
        prior_sum[n] = prior_sum.get(n, 0) + prior
        prior_count[n] = prior_count.get(n, 0) + 1
    position_prior = estimate_position_prior(cyclic_all)

    stats: dict[str, dict[str, list]] = {
        name: {"closed": [], "clean": [], "changed": [], "positions": [], "agree": []}
        for name in FORMULATIONS
    }
    for index, (item, closed, clean) in enumerate(data):
        n = len(item.letters)
        gold = item.letters.index(item.gold)
        # leave this item's two prompts out of the prior it is scored with
        mine = per_prompt_priors[2 * index] + per_prompt_priors[2 * index + 1]
        rest = prior_count[n] - 2
        loo = (prior_sum[n] - mine) / rest if rest > 0 else None
        picks_closed = _choices(closed, loo)
        picks_clean = _choices(clean, loo)
        for name in FORMULATIONS:
            if name not in picks_closed:
                continue
            (c0, a0), (c1, a1) = picks_closed[name], picks_clean[name]
            st = stats[name]
            st["closed"].append(c0 == gold)
            st["clean"].append(c1 == gold)
            st["changed"].append(c0 != c1)
            st["positions"] += [c0, c1]
            if a0 is not None:
                st["agree"] += [a0, a1]
    candidates: dict[str, dict[str, Any]] = {}
    for name in FORMULATIONS:
        st = stats[name]
        if not st["clean"]:
            continue
        top_share = Counter(st["positions"]).most_common(1)[0][1] / len(st["positions"])
        candidates[name] = {
            "n": len(st["clean"]),
            "accuracy_closed_book": float(np.mean(st["closed"])),
            "accuracy_clean_evidence": float(np.mean(st["clean"])),
            "evidence_sensitivity": float(np.mean(st["changed"])),
            "top_position_share": float(top_share),
            "orderings_agree": float(np.mean(st["agree"])) if st["agree"] else None,
        }
    if allowed is not None:
        candidates = {name: c for name, c in candidates.items() if name in allowed}
    if formulation == "auto":
        # a position-locked reading measures where the gold sits, not the evidence
        eligible = {
            name: c
            for name, c in candidates.items()
            if c["top_position_share"] < POSITION_LOCK_SHARE
        } or candidates
        best = max(c["accuracy_clean_evidence"] for c in eligible.values())
        near = [
            name
            for name, c in eligible.items()
            if c["accuracy_clean_evidence"] >= best - tie_margin - 1e-12
        ]
        chosen = max(
            near,
            key=lambda name: (
                candidates[name]["evidence_sensitivity"],
                -PREFERENCE.index(name),
            ),
        )
    else:
        chosen = formulation
    left_out = sorted(set(FORMULATIONS) - set(candidates))
    record: dict[str, Any] = {}
    if allowed is not None and left_out:
        verdict = (getattr(lm, "probe_record", None) or {}).get("verdict")
        record["not_served"] = {
            "formulations": left_out,
            "why": verdict or "the model cannot serve them",
        }
    return {
        **record,
        "requested": formulation,
        "chosen": chosen,
        "position_prior": position_prior,
        "calibration_items": list(item_ids),
        "candidates": candidates,
        "rule": (
            f"position-locked candidates (>= {POSITION_LOCK_SHARE:.0%} on one position) "
            f"excluded; best accuracy with clean evidence; within {tie_margin:.2f} of it, "
            "the most evidence-sensitive; then the preference order " + " > ".join(PREFERENCE)
        )
        if formulation == "auto"
        else "fixed by the config",
    }
