"""The retina-rules generator: grading rules, determinism, class mix, leakage-free splits."""

from __future__ import annotations

import pytest

from safescale.corpora import Task, grouped_split
from safescale.corpora.generators import retina
from safescale.corpora.generators.retina import Record, class_counts, dme_level, dr_grade

BASE = Record(False, False, 0, 0, 0, "none", False, False, False, "none")


@pytest.mark.parametrize(
    ("changes", "grade"),
    [
        ({}, 0),
        ({"microaneurysms": True}, 1),
        ({"microaneurysms": True, "scattered_hemorrhages": True}, 2),
        ({"hemorrhage_quadrants": 3}, 2),
        ({"venous_beading": 1}, 2),
        ({"hemorrhage_quadrants": 4}, 3),
        ({"venous_beading": 2}, 3),
        ({"irma": 1}, 3),
        ({"neovascularization": "NVE"}, 4),
        ({"vitreous_hemorrhage": True}, 4),
    ],
)
def test_icdr_4_2_1_rule(changes: dict, grade: int) -> None:
    assert dr_grade(BASE._replace(**changes)) == grade


def test_erroneous_paraphrases_differ_on_the_boundary() -> None:
    one_criterion = BASE._replace(irma=1)
    assert dr_grade(one_criterion, "all-three") == 2
    assert dr_grade(one_criterion, "irma-gt1") == 2
    assert dr_grade(BASE._replace(irma=2), "irma-gt1") == 3
    assert dme_level(BASE._replace(macular_thickening="center")) == 3


def test_class_counts_reproduce_the_paper() -> None:
    assert class_counts(12522) == {Task.ALIGN: 1149, Task.CONFLICT: 5107, Task.GAP: 6266}
    assert sum(class_counts(601).values()) == 601


def test_same_seed_same_corpus_other_seed_differs() -> None:
    a = retina.generate(240, seed=5)
    b = retina.generate(240, seed=5)
    c = retina.generate(240, seed=6)
    assert a == b
    assert [i.question for i in a[2]] != [i.question for i in c[2]]


@pytest.fixture(scope="module")
def full() -> list:
    _, _, items = retina.generate(12522, seed=0)
    return items


def test_full_size_matches_the_mix(full: list) -> None:
    items = full
    assert len(items) == 12522
    counts = {task: sum(1 for i in items if i.task is task) for task in Task}
    assert counts == {Task.ALIGN: 1149, Task.CONFLICT: 5107, Task.GAP: 6266}
    assert len({i.id for i in items}) == 12522


def test_no_evidence_id_crosses_the_split(full: list) -> None:
    items = full
    split = grouped_split(items, seed=0)
    group_of = {i.id: i.evidence_id for i in items}
    parts = [{group_of[i] for i in p} for p in (split.train, split.val, split.test)]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    task_of = {i.id: i.task for i in items}
    for part, share in ((split.train, 0.6), (split.test, 0.2)):
        gap_share = sum(task_of[i] is Task.GAP for i in part) / len(part)
        assert abs(gap_share - 6266 / 12522) < 0.02
        assert abs(len(part) / len(items) - share) < 0.02


def test_variants_of_a_record_share_its_evidence_id(full: list) -> None:
    items = full
    for item in items[:2000]:
        for pid in item.evidence.clean[:1]:
            assert pid.startswith(f"rec-{item.evidence_id}")
