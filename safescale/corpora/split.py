"""Leakage-aware splits: grouped by ``evidence_id``, stratified by task.

Items that share evidence (all variants of one retinal record, all questions answered by
one guideline cell) must land in the same split, or a detector can memorize the evidence
instead of learning the risk signal. The helpers below assign whole groups to splits
with a seeded greedy balance of the stratum proportions (the idea of scikit-learn's
``StratifiedGroupKFold``), so every split keeps roughly the task mix of the whole set.

They accept :class:`~safescale.corpora.schema.Item` objects, mappings (rows of a table)
or any objects, through ``group``/``stratify``/``key`` callables.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GroupedSplit", "assign_groups", "grouped_kfold", "grouped_split"]


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


def _task(obj: Any) -> Hashable:
    return _field(obj, "task")


def _evidence_id(obj: Any) -> Hashable:
    return _field(obj, "evidence_id")


def _item_id(obj: Any) -> Hashable:
    return _field(obj, "id")


@dataclass(frozen=True)
class GroupedSplit:
    """Item keys (ids, or positions when asked for) of one train/validation/test split."""

    train: list[Any]
    val: list[Any]
    test: list[Any]

    def as_dict(self) -> dict[str, list[Any]]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": self.train, "val": self.val, "test": self.test}


def assign_groups(
    items: Sequence[Any],
    weights: Sequence[float],
    *,
    seed: int,
    group: Callable[[Any], Hashable] = _evidence_id,
    stratify: Callable[[Any], Hashable] | None = _task,
) -> dict[Hashable, int]:
    """Assign every group to one of ``len(weights)`` parts.

    Groups are visited largest first (ties in seeded random order); each goes to the
    part whose stratum counts are furthest below their targets (``weight`` x the
    stratum's total), so the parts keep the stratum mix.

    Args:
        items: the items.
        weights: relative size of each part (normalized; all must be positive).
        seed: seed of the tie-breaking order.
        group: the group key of an item (default ``evidence_id``).
        stratify: the stratum of an item (default ``task``); None for no stratification.

    Returns:
        group key -> part index.

    Raises:
        ValueError: bad weights, or fewer groups than parts.
    """
    if len(weights) < 2 or any(w <= 0 for w in weights):
        raise ValueError(f"need at least two positive weights, got {list(weights)}")
    total_weight = float(sum(weights))
    shares = [w / total_weight for w in weights]
    strata_of: dict[Hashable, Counter[Hashable]] = defaultdict(Counter)
    for item in items:
        strata_of[group(item)][stratify(item) if stratify is not None else None] += 1
    if len(strata_of) < len(shares):
        raise ValueError(
            f"cannot split {len(strata_of)} evidence group(s) into {len(shares)} parts"
        )
    totals: Counter[Hashable] = Counter()
    for counts in strata_of.values():
        totals.update(counts)
    keys = list(strata_of)
    random.Random(seed).shuffle(keys)
    keys.sort(key=lambda k: -sum(strata_of[k].values()))
    filled = [Counter() for _ in shares]
    sizes = [0] * len(shares)
    n_items = sum(totals.values())
    assignment: dict[Hashable, int] = {}
    for key in keys:
        counts = strata_of[key]
        size = sum(counts.values())

        def cost(part: int, counts: Counter[Hashable] = counts, size: int = size) -> tuple:
            worst = max(
                (filled[part][s] + c) / (shares[part] * totals[s]) for s, c in counts.items()
            )
            return (worst, (sizes[part] + size) / (shares[part] * n_items), part)

        part = min(range(len(shares)), key=cost)
        assignment[key] = part
        filled[part].update(counts)
        sizes[part] += size
    return assignment


def _keys(items: Sequence[Any], key: Callable[[Any], Any], indices: bool) -> list[Any]:
    return list(range(len(items))) if indices else [key(item) for item in items]


def grouped_split(
    items: Sequence[Any],
    *,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    stratify: Callable[[Any], Hashable] | None = _task,
    group: Callable[[Any], Hashable] = _evidence_id,
    key: Callable[[Any], Any] = _item_id,
    indices: bool = False,
) -> GroupedSplit:
    """Split items into train/validation/test with no evidence group crossing splits.

    Args:
        items: the items (Item objects, mappings or objects with the fields used).
        fractions: target shares of train, validation and test.
        seed: seed of the assignment order; the same seed gives the same split.
        stratify: stratum of an item (default its ``task``); None for none.
        group: group key (default ``evidence_id``).
        key: what to return per item (default its ``id``).
        indices: return item positions instead of keys.

    Returns:
        The split; each list follows the input order.
    """
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, val, test), got {fractions}")
    assignment = assign_groups(items, fractions, seed=seed, group=group, stratify=stratify)
    keys = _keys(items, key, indices)
    parts: list[list[Any]] = [[], [], []]
    for item, item_key in zip(items, keys, strict=True):
        parts[assignment[group(item)]].append(item_key)
    return GroupedSplit(*parts)


def grouped_kfold(
    items: Sequence[Any],
    k: int = 5,
    *,
    seed: int = 0,
    stratify: Callable[[Any], Hashable] | None = _task,
    group: Callable[[Any], Hashable] = _evidence_id,
    key: Callable[[Any], Any] = _item_id,
    indices: bool = False,
) -> list[GroupedSplit]:
    """Nested grouped k-fold: fold ``i`` tests on part ``i``, validates on part ``i+1``.

    Each group lands in exactly one part, so within every fold no evidence group crosses
    train, validation and test, and across folds every item is tested exactly once.

    Args:
        items: the items.
        k: number of folds (at least 3: train, validation and test parts must differ).
        seed: seed of the assignment order.
        stratify: stratum of an item (default its ``task``); None for none.
        group: group key (default ``evidence_id``).
        key: what to return per item (default its ``id``).
        indices: return item positions instead of keys.

    Returns:
        ``k`` splits.
    """
    if k < 3:
        raise ValueError(f"k must be at least 3, got {k}")
    assignment = assign_groups(items, [1.0] * k, seed=seed, group=group, stratify=stratify)
    keys = _keys(items, key, indices)
    folds = []
    for fold in range(k):
        parts: list[list[Any]] = [[], [], []]
        for item, item_key in zip(items, keys, strict=True):
            part = assignment[group(item)]
            index = 2 if part == fold else 1 if part == (fold + 1) % k else 0
            parts[index].append(item_key)
        folds.append(GroupedSplit(*parts))
    return folds
