"""Grouped, stratified splits: no evidence group crosses splits, task mix kept."""

from __future__ import annotations

from collections import Counter

import pytest

from safescale.corpora import grouped_kfold, grouped_split


def _items(n_groups: int = 300) -> list[dict]:
    items = []
    for group in range(n_groups):
        tasks = ["gap", "conflict", "align"][: 1 + group % 3]
        for variant, task in enumerate(tasks):
            items.append({"id": f"i{group}-{variant}", "evidence_id": f"g{group}", "task": task})
    return items


def _group_of(items: list[dict]) -> dict[str, str]:
    return {item["id"]: item["evidence_id"] for item in items}


def test_no_group_crosses_and_everything_assigned() -> None:
    items = _items()
    split = grouped_split(items, seed=3)
    group_of = _group_of(items)
    groups = [{group_of[i] for i in part} for part in (split.train, split.val, split.test)]
    assert not groups[0] & groups[1] and not groups[0] & groups[2] and not groups[1] & groups[2]
    assert sorted(split.train + split.val + split.test) == sorted(i["id"] for i in items)


def test_fractions_and_task_mix_are_close_to_target() -> None:
    items = _items()
    split = grouped_split(items, fractions=(0.6, 0.2, 0.2), seed=0)
    task_of = {i["id"]: i["task"] for i in items}
    total = Counter(i["task"] for i in items)
    for part, share in ((split.train, 0.6), (split.val, 0.2), (split.test, 0.2)):
        assert abs(len(part) / len(items) - share) < 0.03
        counts = Counter(task_of[i] for i in part)
        for task, count in total.items():
            assert abs(counts[task] / count - share) < 0.05, (task, counts[task], count)


def test_seed_determines_split() -> None:
    items = _items()
    assert grouped_split(items, seed=1) == grouped_split(items, seed=1)
    assert grouped_split(items, seed=1) != grouped_split(items, seed=2)


def test_indices_mode_returns_positions() -> None:
    items = _items(30)
    split = grouped_split(items, seed=0, indices=True)
    assert sorted(split.train + split.val + split.test) == list(range(len(items)))


def test_kfold_tests_every_item_once_without_crossing() -> None:
    items = _items()
    folds = grouped_kfold(items, 5, seed=0)
    tested = Counter(i for fold in folds for i in fold.test)
    assert set(tested.values()) == {1} and len(tested) == len(items)
    group_of = _group_of(items)
    for fold in folds:
        parts = [{group_of[i] for i in p} for p in (fold.train, fold.val, fold.test)]
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]


def test_too_few_groups_is_an_error() -> None:
    items = [{"id": "a", "evidence_id": "g", "task": "gap"}]
    with pytest.raises(ValueError, match="1 evidence group"):
        grouped_split(items, seed=0)
