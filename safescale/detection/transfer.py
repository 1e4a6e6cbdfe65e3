"""Transfer: a detector trained on one (model, corpus, condition), tested on another.

A *set* is the responses of one model under one condition on one corpus, with their
features (a detection directory's ``features.parquet`` holds every condition of its
model × corpus). For a pair (train set A, test set B):

* the evidence groups of A and B together are cut into K grouped folds (the same item
  under two conditions is one group, so it is on one side only); in fold ``i`` the
  detector is fitted on A's responses in the training parts, its threshold picked on
  A's responses in the validation part, and it scores B's responses in the test part.
  Every response of B is scored once per repeat by a detector that never saw its
  evidence group — neither as A's responses nor as B's;
* A = B (the diagonal) is the set's own out-of-fold estimate;
* intervals: the cluster bootstrap of :mod:`.evaluation` (thresholds re-picked on A's
  validation responses in every replicate).

The features of A and B must be the same columns (the same model: ECRT's per-layer
features differ in number between models of different depth); a pair that does not
fit says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from pydantic import BaseModel, ConfigDict

from safescale.detection.evaluation import (
    Estimate,
    cross_validate,
    interval_rows,
    make_detector,
)
from safescale.detection.registry import SAFE, DetectorUnavailable

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
    note: str | None = None


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
    repeats: int = 1,
) -> TransferCell:
    """The cell (``train``, ``test``) of ``method`` (see the module docstring)."""
    cell = {"method": method, "train": train.key, "test": test.key}
    same = train.key == test.key
    a = train.frame.assign(_set="train")
    b = test.frame.assign(_set="test")
    try:
        det = make_detector(method, seed=seed, n_estimators=n_estimators)
        width_a, width_b = det.design_matrix(a).shape[1], det.design_matrix(b).shape[1]
    except DetectorUnavailable as error:
        return TransferCell(**cell, reason=str(error))
    if width_a != width_b:
        return TransferCell(
            **cell,
            reason=(
                f"{width_a} features on {train.key}, {width_b} on {test.key} (another "
                "model's depth): the detector cannot transfer"
            ),
        )
    frame = a if same else pd.concat([a, b], ignore_index=True, sort=False)
    frame = frame.reset_index(drop=True)
    # evidence groups keyed by corpus, so two corpora never share a group by name
    frame["evidence_id"] = [
        f"{c}:{g}"
        for c, g in zip(
            [train.corpus] * len(a) + ([] if same else [test.corpus] * len(b)),
            frame["evidence_id"],
            strict=True,
        )
    ]
    is_train = (frame["_set"] == "train").to_numpy()
    oof = cross_validate(
        frame,
        [method],
        folds=folds,
        repeats=repeats,
        seed=seed,
        target_recall=target_recall,
        n_estimators=n_estimators,
        fit_rows=None if same else is_train,
        test_rows=None if same else ~is_train,
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
    scored = oof.scored.any(0)
    note = None
    if oof.skipped:
        note = (
            f"{len(oof.skipped)} fold(s) could not be fitted and their responses were not "
            f"scored ({oof.skipped[0]})"
        )
    return TransferCell(
        **cell,
        note=note,
        n_test=int(scored.sum()),
        n_safe=int((labels[scored] == SAFE).sum()),
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
