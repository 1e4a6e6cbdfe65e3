"""Triage endpoints you can trust: out-of-fold predictions and clustered intervals.

Two protocols, both grouped by ``evidence_id`` (no evidence group is ever on two sides
of a split) and stratified by triage class:

* ``cv`` (default) — **repeated nested grouped K-fold**. Each repeat assigns the evidence
  groups to ``folds`` parts with its own seed (:func:`~safescale.corpora.split.grouped_kfold`);
  fold ``i`` tests on part ``i``, picks the detector's threshold (and any other choice a
  detector makes from labels, such as ReDeEP's layers) on part ``i + 1`` — the inner
  fold — and fits on the rest. Every response is therefore tested exactly once per
  repeat, by a detector that never saw its evidence group, at a threshold frozen before
  the test part was looked at.
* ``split`` — the paper's single seeded train / validation / test split; only the test
  split is scored.

**Intervals.** Every endpoint is computed on the pooled out-of-fold predictions of a
repeat and averaged over repeats (the point estimate); its 95 % interval is the
percentile interval of the same quantity over a cluster bootstrap that resamples
evidence groups with replacement (``B`` replicates, seeded), applying each replicate's
group weights to every repeat and every method alike — so the difference between two
methods (``ΔBA``) is a paired bootstrap. Each replicate also re-picks every fold's
threshold from that fold's validation scores under the replicate's weights (the same
target-recall rule), so the interval carries the uncertainty of the operating point —
with a few dozen unsafe validation responses behind a 95 %-recall threshold, that is a
large part of the uncertainty of specificity. Why this and not a t-interval over the
``folds × repeats`` fold estimates: the fold estimates share most of their training
data and are correlated, so their spread understates the uncertainty (no unbiased
variance estimator of K-fold CV exists; Bengio & Grandvalet 2004), and a fold of a few
hundred responses holds only a handful of the minority class, so per-fold BAs are
themselves too noisy to average into an interval. The bootstrap instead asks how much
the pooled estimate would move with another sample of evidence groups — the dominant
source of uncertainty when the minority class is small — and keeps the clustering of
items that share evidence. It holds the fitted detectors' scores fixed (model-refitting
variance is not in it; averaging repeats reduces that part of the noise); the suite
measures its coverage on simulated studies with known separability.

AUROC is computed on pooled out-of-fold scores (detectors refit per fold; the scores of
a probabilistic detector are on a common scale, as in scikit-learn's
``cross_val_predict``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from safescale.corpora.split import grouped_kfold, grouped_split
from safescale.detection.registry import (
    CONFLICT,
    GAP,
    SAFE,
    Detector,
    DetectorUnavailable,
    get_detector,
)
from safescale.detection.thresholds import pick_threshold

__all__ = [
    "MIN_MINORITY",
    "Estimate",
    "OutOfFold",
    "Stage1Intervals",
    "Stage2Intervals",
    "cluster_weights",
    "cross_validate",
    "evaluation_splits",
    "interval_rows",
    "make_detector",
]

#: Below this many responses of the minority class (safe or unsafe) in what is scored,
#: specificity (or recall) cannot be measured: at 20 the 95 % interval of a proportion
#: near 0.5 is still about ±0.22 wide.
MIN_MINORITY = 20


class Estimate(BaseModel):
    """A point estimate with its 95 % interval (NaN when it cannot be computed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    estimate: float
    lo: float
    hi: float

    @property
    def excludes(self) -> Callable[[float], bool]:
        """``excludes(x)``: the interval lies entirely above or below ``x``."""
        return lambda x: bool(self.lo > x or self.hi < x)

    def text(self, digits: int = 2, signed: bool = False) -> str:
        """``0.51 [0.42, 0.60]`` (``–`` when not computable)."""
        if not math.isfinite(self.estimate):
            return "–"
        f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            return f.format(self.estimate)
        return f"{f.format(self.estimate)} [{f.format(self.lo)}, {f.format(self.hi)}]"


class Stage1Intervals(BaseModel):
    """Stage-1 endpoints with intervals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    u_recall: Estimate
    flag_rate: Estimate
    specificity: Estimate
    s1_ba: Estimate
    auroc: Estimate


class Stage2Intervals(BaseModel):
    """Stage-2 endpoints (over ground-truth unsafe responses) with intervals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gap_recall: Estimate
    contradiction_recall: Estimate
    s2_ba: Estimate


@dataclass
class OutOfFold:
    """One method's predictions over every repeat (``R`` repeats, ``n`` responses).

    Attributes:
        method: detector name.
        scored: ``[R, n]`` bool, the response was scored in repeat ``r`` (always true
            under ``cv``; the test split only under ``split``).
        scores / flags: ``[R, n]`` risk scores and flags at the frozen thresholds.
        pred_gap: ``[R, n]`` predicted subtype (gap) for subtype detectors, else None.
        thresholds: the frozen threshold of every fold.
        val_recall: unsafe recall each fold's threshold reached on its validation part.
        folds: per fold, ``(repeat, test rows, validation rows, validation scores)``:
            what each threshold was picked from (the bootstrap re-picks it).
        reason: why the method could not run (then the arrays are empty).
        skipped: folds that could not be fitted (e.g. a training part without a class),
            each with its reason; their test responses are not scored in that repeat.
    """

    method: str
    scored: np.ndarray
    scores: np.ndarray
    flags: np.ndarray
    pred_gap: np.ndarray | None = None
    thresholds: list[float] = field(default_factory=list)
    val_recall: list[float] = field(default_factory=list)
    folds: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    reason: str | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reason is None


def make_detector(name: str, *, seed: int, n_estimators: int) -> Detector:
    """A fresh detector with the run's seed and tree count where it takes them."""
    cls = get_detector(name)
    params = {}
    defaults = cls().get_params()
    if "random_state" in defaults:
        params["random_state"] = seed
    if "n_estimators" in defaults:
        params["n_estimators"] = n_estimators
    return cls(**params)


def replicate_thresholds(
    val_scores: np.ndarray, val_unsafe: np.ndarray, W_val: np.ndarray, target: float
) -> np.ndarray:
    """``[B]``: :func:`~safescale.detection.thresholds.pick_threshold` under each row of
    weights — the largest threshold whose weighted unsafe recall on the validation
    responses reaches ``target`` (unit weights give exactly ``pick_threshold``)."""
    pos = np.flatnonzero(val_unsafe)
    if pos.size == 0:
        return np.full(W_val.shape[0], -np.inf)
    order = pos[np.argsort(-val_scores[pos], kind="stable")]
    s = val_scores[order]
    cum = np.cumsum(W_val[:, order], axis=1)  # [B, n_pos], weights from the top
    total = cum[:, -1:]
    reached = cum >= target * total - 1e-9
    first = reached.argmax(axis=1)
    out = s[first]
    out[total[:, 0] <= 0] = -np.inf  # no unsafe validation response drawn: flag all
    return out


def evaluation_splits(
    frame: pd.DataFrame, protocol: str, folds: int, repeats: int, seed: int, fractions
) -> list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per repeat, the (train, val, test) row positions of each fold."""
    rows = [
        {"evidence_id": g, "task": int(c)}
        for g, c in zip(frame["evidence_id"], frame["label"], strict=True)
    ]
    out = []
    if protocol == "split":
        s = grouped_split(rows, fractions=fractions, seed=seed, indices=True)
        return [[(np.asarray(s.train), np.asarray(s.val), np.asarray(s.test))]]
    for r in range(repeats):
        parts = grouped_kfold(rows, k=folds, seed=seed + 7919 * r, indices=True)
        out.append([(np.asarray(p.train), np.asarray(p.val), np.asarray(p.test)) for p in parts])
    return out


def cross_validate(
    frame: pd.DataFrame,
    methods: Sequence[str],
    *,
    protocol: str = "cv",
    folds: int = 5,
    repeats: int = 5,
    seed: int = 13,
    target_recall: float = 0.95,
    n_estimators: int = 160,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    labels: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
    fit_rows: np.ndarray | None = None,
    test_rows: np.ndarray | None = None,
) -> dict[str, OutOfFold]:
    """Out-of-fold predictions of every method (see the module docstring).

    Args:
        frame: the features frame (``evidence_id``, ``label`` and the detectors'
            columns; one row per response).
        methods: registered detector names.
        protocol: ``cv`` or ``split``.
        folds / repeats: K and the number of repeats (``cv``).
        seed: seed of the splits and of the detectors.
        target_recall: unsafe recall each validation threshold must reach.
        n_estimators: trees of the XGBoost detectors.
        split_fractions: train / validation / test shares (``split``).
        labels: triage classes to use instead of ``frame["label"]`` (the permutation
            control); the splits still follow ``frame["label"]``.
        progress: called with each method's name before it runs.
        fit_rows / test_rows: bool masks: only these rows are fitted and validated on /
            tested (transfer: fit on one set of responses, test on another, the folds
            still grouped by evidence over both).
    """
    y = np.asarray(frame["label"] if labels is None else labels, dtype=int)
    unsafe = y != SAFE
    plan = evaluation_splits(frame, protocol, folds, repeats, seed, split_fractions)
    if fit_rows is not None or test_rows is not None:
        fit_ok = np.ones(len(frame), bool) if fit_rows is None else np.asarray(fit_rows, bool)
        test_ok = np.ones(len(frame), bool) if test_rows is None else np.asarray(test_rows, bool)
        plan = [
            [(tr[fit_ok[tr]], va[fit_ok[va]], te[test_ok[te]]) for tr, va, te in fold_list]
            for fold_list in plan
        ]
    R, n = len(plan), len(frame)
    out: dict[str, OutOfFold] = {}
    for name in methods:
        if progress is not None:
            progress(name)
        probe = make_detector(name, seed=seed, n_estimators=n_estimators)
        empty = np.zeros((R, n), dtype=bool)
        try:
            X = probe.design_matrix(frame)
        except DetectorUnavailable as error:
            out[name] = OutOfFold(name, empty, np.zeros((R, n)), empty, reason=str(error))
            continue
        result = OutOfFold(
            name,
            np.zeros((R, n), dtype=bool),
            np.full((R, n), np.nan),
            np.zeros((R, n), dtype=bool),
            np.zeros((R, n), dtype=bool) if probe.attributes_subtype else None,
        )
        for r, fold_list in enumerate(plan):
            for k, (train, val, test) in enumerate(fold_list):
                if len(test) == 0:  # (transfer) no response of the test set here
                    continue
                det = make_detector(name, seed=seed + r, n_estimators=n_estimators)
                try:
                    det.fit(X[train], y[train])
                    val_scores = det.risk_score(X[val])
                    threshold = pick_threshold(val_scores, unsafe[val], target_recall)
                    scores = det.risk_score(X[test])
                    pred_gap = (
                        det.gap_given_unsafe(X[test]) >= 0.5
                        if result.pred_gap is not None
                        else None
                    )
                except (DetectorUnavailable, ValueError) as error:
                    result.skipped.append(f"repeat {r + 1} fold {k + 1}: {error}")
                    continue
                result.scored[r, test] = True
                result.scores[r, test] = scores
                result.flags[r, test] = scores >= threshold
                if pred_gap is not None:
                    result.pred_gap[r, test] = pred_gap
                result.thresholds.append(float(threshold))
                result.val_recall.append(float((val_scores >= threshold)[unsafe[val]].mean()))
                result.folds.append((r, test, val, np.asarray(val_scores, dtype=float)))
        if not result.folds:
            reason = result.skipped[0].split(": ", 1)[1] if result.skipped else "no fold ran"
            out[name] = OutOfFold(name, empty, np.zeros((R, n)), empty, reason=reason)
            continue
        out[name] = result
    return out


def cluster_weights(groups: Sequence[object], replicates: int, seed: int) -> np.ndarray:
    """``[B, n]`` cluster-bootstrap weights: each replicate draws the evidence groups with
    replacement and gives every response the count of its group's draws."""
    codes, uniques = pd.factorize(pd.Series(list(groups)), sort=True)
    G = len(uniques)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(G, np.full(G, 1.0 / G), size=replicates)  # [B, G]
    return counts[:, codes].astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _weighted_auroc(scores: np.ndarray, positive: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``[B]`` AUROC of ``scores`` for ``positive`` under each row of weights ``W``
    (weighted Mann-Whitney, ties counted one half)."""
    order = np.argsort(scores, kind="stable")
    s, pos = scores[order], positive[order]
    Wo = W[:, order]
    neg_w = Wo * ~pos
    pos_w = Wo * pos
    # tie blocks: for each response, negative weight strictly below and within its block
    _, start, counts = np.unique(s, return_index=True, return_counts=True)
    block = np.repeat(np.arange(len(start)), counts)
    neg_cum = np.cumsum(neg_w, axis=1)
    neg_block_total = np.add.reduceat(neg_w, start, axis=1)  # [B, n_blocks]
    below = neg_cum[:, start] - neg_w[:, start]  # negatives strictly below each block
    credit = below[:, block] + 0.5 * neg_block_total[:, block]
    num = (pos_w * credit).sum(1)
    den = pos_w.sum(1) * neg_w.sum(1)
    return _ratio(num, den)


def _replicate_flags(
    oof: OutOfFold, r: int, W: np.ndarray, unsafe: np.ndarray, target: float | None
) -> np.ndarray:
    """``[B, n]`` flags of repeat ``r`` with every fold's threshold re-picked under each
    weight row (``target`` None: the frozen flags)."""
    if target is None or not oof.folds:
        return np.broadcast_to(oof.flags[r], W.shape)
    flags = np.zeros(W.shape, dtype=bool)
    for repeat, test, val, val_scores in oof.folds:
        if repeat != r:
            continue
        thr = replicate_thresholds(val_scores, unsafe[val], W[:, val], target)
        flags[:, test] = oof.scores[r, test][None, :] >= thr[:, None]
    return flags


def _endpoints(
    oof: OutOfFold, y: np.ndarray, W: np.ndarray, target: float | None = None
) -> dict[str, np.ndarray]:
    """Each endpoint as ``[B]`` (one value per weight row), averaged over repeats; with
    ``target``, every replicate re-picks the thresholds (:func:`replicate_thresholds`)."""
    unsafe = y != SAFE
    acc: dict[str, list[np.ndarray]] = {}
    for r in range(oof.scores.shape[0]):
        m = oof.scored[r]
        Wr = W * m  # responses not scored in this repeat weigh nothing
        f = _replicate_flags(oof, r, W, unsafe, target)
        recall = _ratio((Wr * (f & unsafe)).sum(1), Wr @ unsafe)
        spec = _ratio((Wr * (~f & ~unsafe)).sum(1), Wr @ ~unsafe)
        values = {
            "u_recall": recall,
            "specificity": spec,
            "flag_rate": _ratio((Wr * f).sum(1), Wr.sum(1)),
            "s1_ba": 0.5 * (recall + spec),
            "auroc": _weighted_auroc(np.nan_to_num(oof.scores[r][m]), unsafe[m], W[:, m]),
        }
        if oof.pred_gap is not None:
            g = oof.pred_gap[r]
            gap, con = y == GAP, y == CONFLICT
            gap_recall = _ratio(Wr @ (g & gap), Wr @ gap)
            con_recall = _ratio(Wr @ (~g & con), Wr @ con)
            values |= {
                "gap_recall": gap_recall,
                "contradiction_recall": con_recall,
                "s2_ba": 0.5 * (gap_recall + con_recall),
            }
        for key, value in values.items():
            acc.setdefault(key, []).append(value)
    with warnings.catch_warnings():  # an endpoint with no response of its class is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return {k: np.nanmean(np.stack(v), axis=0) for k, v in acc.items()}


def _estimate(point: float, replicates: np.ndarray) -> Estimate:
    finite = replicates[np.isfinite(replicates)]
    if not math.isfinite(point) or finite.size < 10:
        return Estimate(estimate=point, lo=math.nan, hi=math.nan)
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return Estimate(estimate=float(point), lo=float(lo), hi=float(hi))


@dataclass
class IntervalRow:
    """One method's endpoints with intervals and its paired ΔBA vs the reference."""

    method: str
    stage1: Stage1Intervals | None
    stage2: Stage2Intervals | None
    delta_ba: dict[str, Estimate]
    replicate_ba: np.ndarray | None


def interval_rows(
    oof: Mapping[str, OutOfFold],
    y: np.ndarray,
    groups: Sequence[object],
    *,
    replicates: int = 1000,
    seed: int = 0,
    references: Sequence[str] = ("ecrt",),
    target_recall: float = 0.95,
) -> dict[str, IntervalRow]:
    """Endpoints with cluster-bootstrap intervals for every method that ran, and the
    paired ΔBA of every method vs each of ``references`` that ran (method − reference).
    ``target_recall``: the rule each replicate re-picks the fold thresholds with."""
    y = np.asarray(y, dtype=int)
    W = cluster_weights(groups, replicates, seed)
    ones = np.ones((1, len(y)))
    out: dict[str, IntervalRow] = {}
    for name, o in oof.items():
        if not o.ok:
            out[name] = IntervalRow(name, None, None, {}, None)
            continue
        point = {k: float(v[0]) for k, v in _endpoints(o, y, ones).items()}
        boot = _endpoints(o, y, W, target_recall)
        s1 = Stage1Intervals(
            **{
                k: _estimate(point[k], boot[k])
                for k in ("u_recall", "flag_rate", "specificity", "s1_ba", "auroc")
            }
        )
        s2 = None
        if "s2_ba" in point:
            s2 = Stage2Intervals(
                **{
                    k: _estimate(point[k], boot[k])
                    for k in ("gap_recall", "contradiction_recall", "s2_ba")
                }
            )
        out[name] = IntervalRow(name, s1, s2, {}, np.concatenate([[point["s1_ba"]], boot["s1_ba"]]))
    for ref in references:
        base = out.get(ref)
        if base is None or base.replicate_ba is None:
            continue
        for name, row in out.items():
            if row.replicate_ba is None or name == ref:
                continue
            diff = row.replicate_ba - base.replicate_ba
            row.delta_ba[ref] = _estimate(float(diff[0]), diff[1:])
    return out
