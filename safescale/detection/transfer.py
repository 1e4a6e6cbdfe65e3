"""Transfer: a detector trained on one (model, corpus, condition), tested on another.

A *set* is the responses of one model under one condition on one corpus, with their
features (a detection directory's ``features.parquet`` holds every condition of its
model × corpus). For a pair (train set A, test set B):

* A ≠ B: the detector is fitted on A (its grouped training part) and its threshold
  picked on A's grouped validation part (a quarter of A's evidence groups), then frozen;
  it scores every response of B whose evidence group A never saw (responses of B that
  share an evidence group with A — the same items under another condition — are left
  out, so no cell is scored on evidence the detector was fitted or tuned on). The
  interval is the cluster bootstrap of :mod:`.evaluation` over B's evidence groups, the
  threshold re-picked on A's validation part in every replicate.
* A = B: the diagonal is the set's own out-of-fold estimate (grouped cross-validation).

The features of A and B must be the same columns (the same model: ECRT's per-layer
features differ in number between models of different depth); a pair that does not
fit says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from safescale.corpora.split import assign_groups
from safescale.detection.evaluation import (
    Estimate,
    OutOfFold,
    cross_validate,
    interval_rows,
    make_detector,
)
from safescale.detection.registry import SAFE, DetectorUnavailable
from safescale.detection.thresholds import pick_threshold

__all__ = ["TransferCell", "TransferSet", "transfer_cell", "transfer_matrix"]


@dataclass(frozen=True)
class TransferSet:
    """The responses of one (model, corpus, condition) with their features."""

    model: str
    corpus: str
    condition: str
    frame: pd.DataFrame

    @property
    def key(self) -> str:
        return f"{self.model} · {self.corpus} · {self.condition}"


class TransferCell(BaseModel):
    """One trained-on × tested-on cell: Stage-1 BA with its interval, or why not."""

    model_config = ConfigDict(extra="forbid")

    method: str
    train: str
    test: str
    n_test: int = 0
    n_safe: int = 0
    s1_ba: Estimate | None = None
    u_recall: Estimate | None = None
    reason: str | None = None


def _fit_rows(frame: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows of a set: three quarters of its evidence groups and
    one quarter, stratified by triage class."""
    rows = [
        {"evidence_id": g, "task": int(c)}
        for g, c in zip(frame["evidence_id"], frame["label"], strict=True)
    ]
    part = assign_groups(rows, [3.0, 1.0], seed=seed)
    which = np.asarray([part[r["evidence_id"]] for r in rows])
    return np.flatnonzero(which == 0), np.flatnonzero(which == 1)


def transfer_cell(
    method: str,
    train: TransferSet,
    test: TransferSet,
    *,
    seed: int = 13,
    target_recall: float = 0.95,
    n_estimators: int = 160,
    replicates: int = 1000,
    folds: int = 5,
    repeats: int = 5,
) -> TransferCell:
    """The cell (``train``, ``test``) of ``method`` (see the module docstring)."""
    cell = {"method": method, "train": train.key, "test": test.key}
    if train.key == test.key:
        frame = train.frame.reset_index(drop=True)
        oof = cross_validate(
            frame,
            [method],
            folds=folds,
            repeats=repeats,
            seed=seed,
            target_recall=target_recall,
            n_estimators=n_estimators,
        )[method]
        if not oof.ok:
            return TransferCell(**cell, reason=oof.reason)
        labels = frame["label"].to_numpy()
        row = interval_rows(
            {method: oof},
            labels,
            frame["evidence_id"],
            replicates=replicates,
            seed=seed,
            references=(),
            target_recall=target_recall,
        )[method]
        return TransferCell(
            **cell,
            n_test=len(frame),
            n_safe=int((labels == SAFE).sum()),
            s1_ba=row.stage1.s1_ba,
            u_recall=row.stage1.u_recall,
        )
    a = train.frame.reset_index(drop=True)
    fit, val = _fit_rows(a, seed)
    seen = set(a["evidence_id"])
    b = test.frame[~test.frame["evidence_id"].isin(seen)].reset_index(drop=True)
    if b.empty:
        reason = "every response of the test set shares an evidence group with the training set"
        return TransferCell(**cell, reason=reason)
    both = pd.concat([a, b], ignore_index=True, sort=False)
    det = make_detector(method, seed=seed, n_estimators=n_estimators)
    try:
        X_a = det.design_matrix(a)
        X_b = det.design_matrix(b)
        if X_a.shape[1] != X_b.shape[1]:
            raise DetectorUnavailable(
                f"{method}: {X_a.shape[1]} features on {train.key}, {X_b.shape[1]} on "
                f"{test.key} (another model's depth): the detector cannot transfer"
            )
        y_a = a["label"].to_numpy()
        det.fit(X_a[fit], y_a[fit])
        val_scores = np.asarray(det.risk_score(X_a[val]), dtype=float)
        threshold = pick_threshold(val_scores, y_a[val] != SAFE, target_recall)
        scores = np.asarray(det.risk_score(X_b), dtype=float)
    except (DetectorUnavailable, ValueError) as error:
        return TransferCell(**cell, reason=str(error))
    n, offset = len(both), len(a)
    test_rows = np.arange(offset, n)
    oof = OutOfFold(
        method,
        np.zeros((1, n), dtype=bool),
        np.full((1, n), np.nan),
        np.zeros((1, n), dtype=bool),
        thresholds=[float(threshold)],
    )
    oof.scored[0, test_rows] = True
    oof.scores[0, test_rows] = scores
    oof.flags[0, test_rows] = scores >= threshold
    oof.folds.append((0, test_rows, val, val_scores))
    labels = both["label"].to_numpy()
    groups = [f"train:{g}" for g in a["evidence_id"]] + [f"test:{g}" for g in b["evidence_id"]]
    row = interval_rows(
        {method: oof},
        labels,
        groups,
        replicates=replicates,
        seed=seed,
        references=(),
        target_recall=target_recall,
    )[method]
    return TransferCell(
        **cell,
        n_test=len(b),
        n_safe=int((b["label"] == SAFE).sum()),
        s1_ba=row.stage1.s1_ba,
        u_recall=row.stage1.u_recall,
    )


def transfer_matrix(
    sets: Sequence[TransferSet], methods: Sequence[str], **settings
) -> list[TransferCell]:
    """Every (train, test) cell of every method (rows: trained on; columns: tested on)."""
    return [
        transfer_cell(method, a, b, **settings) for method in methods for a in sets for b in sets
    ]
