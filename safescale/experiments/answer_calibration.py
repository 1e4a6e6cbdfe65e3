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
(at least :data:`~safescale.statistics.validity.POSITION_LOCK_SHARE` of their answers
on one position) are set aside unless every candidate is; then the candidate with the
best accuracy *with evidence*; among candidates within ``answer.tie_margin`` of it, the
one whose answers move most between no evidence and clean evidence; then the fixed
preference order of :data:`PREFERENCE`.

**How sure the choice is** (``selection`` in the record, and so in the manifest). The
best of seven candidates on a few items is an optimistic estimate of the chosen one
(the winner's curse), so the record also carries:

* every candidate's accuracy with clean evidence as an estimate with its 95 %
  percentile bootstrap interval over the calibration evidence groups;
* the chosen candidate's paired margin over the runner-up (the best other eligible
  candidate), with its interval and discordance, and the calibration items
  :func:`~safescale.statistics.power.required_items` says telling the two apart needs
  at 80 % power (the size a calibration set would need for this choice to be firm);
* a **cross-fitted** accuracy of the ``auto`` rule itself: the calibration groups are
  split into folds (:data:`CROSS_FIT_FOLDS`), the rule picks a formulation on the
  other folds and is scored on the held-out one, so no item scores the choice it
  helped make; and how many folds picked the same formulation;
* ``confidence``: ``firm`` (the margin's interval excludes 0 and every fold agrees)
  or ``uncertain``, with a sentence saying why.

The report sets the chosen candidate's calibration interval beside the study's own
clean-evidence accuracy and flags a study estimate outside it
(:mod:`~safescale.statistics.validity`).
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
from safescale.models import NEUTRAL_MESSAGE
from safescale.statistics.bootstrap import (
    bootstrap_ratio,
    key_entropy,
    paired_difference,
    replicate_counts,
)
from safescale.statistics.power import required_items
from safescale.statistics.validity import POSITION_LOCK_SHARE

if TYPE_CHECKING:
    from safescale.agents.lmcache import CachedLM

__all__ = [
    "CROSS_FIT_FOLDS",
    "PREFERENCE",
    "calibrate",
    "calibration_item_ids",
    "needs_calibration",
]

#: Folds (of the calibration evidence groups) of the cross-fitted accuracy of ``auto``.
CROSS_FIT_FOLDS = 4
#: Bootstrap replicates of the calibration intervals.
CALIBRATION_REPLICATES = 1000

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
        name: {"closed": [], "clean": [], "changed": [], "positions": [], "agree": [], "index": []}
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
            st["index"].append(index)
            st["closed"].append(c0 == gold)
            st["clean"].append(c1 == gold)
            st["changed"].append(c0 != c1)
            st["positions"] += [c0, c1]
            if a0 is not None:
                st["agree"] += [a0, a1]
    groups = [item.evidence_id or item.id for item in items]
    names = sorted(set(groups))
    unit = np.array([names.index(g) for g in groups])
    counts = replicate_counts(
        len(names), CALIBRATION_REPLICATES, key_entropy(0, "calibration", corpus.name, *item_ids)
    )
    per_unit_n = np.bincount(unit, minlength=len(names)).astype(float)

    def unit_sums(values: np.ndarray) -> np.ndarray:
        return np.bincount(unit, weights=values.astype(float), minlength=len(names))

    arrays: dict[str, dict[str, np.ndarray]] = {}
    candidates: dict[str, dict[str, Any]] = {}
    for name in FORMULATIONS:
        st = stats[name]
        if not st["clean"]:
            continue
        # full-length arrays (letter_pride lacks the items without a leave-one-out prior)
        valid = np.zeros(len(items), dtype=bool)
        valid[st["index"]] = True
        clean_ok = np.zeros(len(items), dtype=bool)
        clean_ok[st["index"]] = st["clean"]
        changed = np.zeros(len(items), dtype=bool)
        changed[st["index"]] = st["changed"]
        positions = np.full((len(items), 2), -1)
        positions[st["index"]] = np.asarray(st["positions"]).reshape(-1, 2)
        arrays[name] = {
            "valid": valid,
            "clean": clean_ok,
            "changed": changed,
            "positions": positions,
        }
        top_share = Counter(st["positions"]).most_common(1)[0][1] / len(st["positions"])
        estimate = bootstrap_ratio(unit_sums(clean_ok), unit_sums(valid), counts=counts).to_dict()
        candidates[name] = {
            "n": len(st["clean"]),
            "accuracy_closed_book": float(np.mean(st["closed"])),
            "accuracy_clean_evidence": float(np.mean(st["clean"])),
            "accuracy_clean_evidence_estimate": estimate,
            "evidence_sensitivity": float(np.mean(st["changed"])),
            "top_position_share": float(top_share),
            "orderings_agree": float(np.mean(st["agree"])) if st["agree"] else None,
        }
    if allowed is not None:
        candidates = {name: c for name, c in candidates.items() if name in allowed}
        arrays = {name: a for name, a in arrays.items() if name in allowed}
    everything = np.ones(len(items), dtype=bool)
    chosen = _auto_rule(arrays, everything, tie_margin) if formulation == "auto" else formulation
    left_out = sorted(set(FORMULATIONS) - set(candidates))
    not_served: dict[str, Any] = {}
    if allowed is not None and left_out:
        verdict = (getattr(lm, "probe_record", None) or {}).get("verdict")
        not_served["not_served"] = {
            "formulations": left_out,
            "why": verdict or "the model cannot serve them",
        }
    record: dict[str, Any] = {
        **not_served,
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
    if formulation == "auto" and chosen in arrays:
        record["selection"] = _selection(
            arrays, chosen, unit, names, counts, per_unit_n, tie_margin, corpus.name
        )
    return record


def _eligible(arrays: dict[str, dict[str, np.ndarray]], mask: np.ndarray) -> list[str]:
    """The candidates not position-locked on the masked items (all when every one is)."""
    scored = [name for name, a in arrays.items() if (a["valid"] & mask).any()]
    unlocked = []
    for name in scored:
        a = arrays[name]
        positions = a["positions"][a["valid"] & mask].ravel()
        top = Counter(positions.tolist()).most_common(1)[0][1] / len(positions)
        if top < POSITION_LOCK_SHARE:
            unlocked.append(name)
    return unlocked or scored


def _auto_rule(
    arrays: dict[str, dict[str, np.ndarray]], mask: np.ndarray, tie_margin: float
) -> str:
    """The ``auto`` rule (module docs) on the items of ``mask``."""
    eligible = _eligible(arrays, mask)

    def mean(name: str, key: str) -> float:
        a = arrays[name]
        return float(a[key][a["valid"] & mask].mean())

    accuracy = {name: mean(name, "clean") for name in eligible}
    best = max(accuracy.values())
    near = [name for name in eligible if accuracy[name] >= best - tie_margin - 1e-12]
    return max(near, key=lambda name: (mean(name, "changed"), -PREFERENCE.index(name)))


def _selection(
    arrays: dict[str, dict[str, np.ndarray]],
    chosen: str,
    unit: np.ndarray,
    names: Sequence[str],
    counts: np.ndarray,
    per_unit_n: np.ndarray,
    tie_margin: float,
    corpus_name: str,
) -> dict[str, Any]:
    """How sure the ``auto`` choice is (module docs): runner-up margin, the items that
    would separate them, the cross-fitted accuracy of the rule and a verdict."""
    n = len(unit)
    everything = np.ones(n, dtype=bool)

    def unit_sums(values: np.ndarray) -> np.ndarray:
        return np.bincount(unit, weights=values.astype(float), minlength=len(names))

    both = arrays[chosen]["valid"]
    others = [c for c in _eligible(arrays, everything) if c != chosen and arrays[c]["valid"].all()]
    out: dict[str, Any] = {"n_items": n, "n_groups": len(names), "n_candidates": len(arrays)}
    margin_lo = None
    if others and both.all():
        runner = max(
            others,
            key=lambda c: (float(arrays[c]["clean"].mean()), float(arrays[c]["changed"].mean())),
        )
        a, b = arrays[chosen]["clean"], arrays[runner]["clean"]
        margin = paired_difference(
            unit_sums(a), per_unit_n, unit_sums(b), per_unit_n, counts=counts
        ).to_dict()
        discordance = float(np.mean(a != b))
        delta = abs(float(a.mean() - b.mean()))
        needed = None
        if 0 < delta <= discordance:
            needed = required_items(delta, discordance)
        margin_lo = margin["lo"]
        out.update(
            {
                "runner_up": runner,
                "margin": margin,
                "discordance": discordance,
                "items_to_separate": needed,
            }
        )
    # cross-fitting: the rule picks on the other folds, is scored on the held-out fold
    rng = np.random.default_rng(key_entropy(0, "cross-fit", corpus_name, *names))
    folds = min(CROSS_FIT_FOLDS, len(names))
    fold_of_group = np.empty(len(names), dtype=int)
    fold_of_group[rng.permutation(len(names))] = np.arange(len(names)) % folds
    fold = fold_of_group[unit]
    correct = np.zeros(n, dtype=bool)
    scored = np.zeros(n, dtype=bool)
    picks = []
    if folds >= 2:
        for f in range(folds):
            held = fold == f
            pick = _auto_rule(arrays, ~held, tie_margin)
            picks.append(pick)
            scored[held] = arrays[pick]["valid"][held]
            correct[held] = arrays[pick]["clean"][held]
        cross = bootstrap_ratio(unit_sums(correct), unit_sums(scored), counts=counts).to_dict()
        out["cross_fit"] = {
            "folds": folds,
            "picks": picks,
            "agree": sum(p == chosen for p in picks),
            "accuracy": cross,
        }
    agree_all = bool(picks) and all(p == chosen for p in picks)
    firm = margin_lo is not None and margin_lo > 0 and agree_all
    if "runner_up" not in out:
        firm = agree_all
    out["confidence"] = "firm" if firm else "uncertain"
    out["summary"] = _selection_summary(chosen, out)
    return out


def _selection_summary(chosen: str, sel: dict[str, Any]) -> str:
    """One sentence on how sure the choice is."""
    parts = [f"{chosen} chosen from {sel['n_candidates']} candidates on {sel['n_items']} items"]
    margin = sel.get("margin")
    if margin is not None and margin.get("value") is not None:
        lo, hi = margin.get("lo"), margin.get("hi")
        interval = (
            f" [{lo * 100:+.1f}, {hi * 100:+.1f}]" if lo is not None and hi is not None else ""
        )
        parts.append(
            f"it beats the runner-up {sel['runner_up']} by {margin['value'] * 100:+.1f} "
            f"points{interval}"
        )
        needed = sel.get("items_to_separate")
        if needed is not None:
            parts.append(
                f"telling the two apart at 80% power needs about {needed} calibration items"
            )
        elif margin["value"] == 0:
            parts.append("the two are tied on these items")
    cross = sel.get("cross_fit")
    if cross is not None:
        acc = cross["accuracy"]
        if acc.get("value") is not None:
            interval = (
                f" [{acc['lo']:.0%}, {acc['hi']:.0%}]"
                if acc.get("lo") is not None and acc.get("hi") is not None
                else ""
            )
            parts.append(
                f"cross-fitted, the rule picks {chosen} in {cross['agree']} of "
                f"{cross['folds']} folds and scores {acc['value']:.0%}{interval} on "
                "the items it did not choose on"
            )
    verdict = "firm" if sel["confidence"] == "firm" else "uncertain"
    return f"choice {verdict}: " + "; ".join(parts) + "."
