"""Internal consistency of every bundled item, and byte-exact regeneration."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from safescale.corpora import Corpus, Stance, Status, Task, load_corpus
from safescale.corpora.conflict import conflict_pool, draw_conflict, pool_kind
from safescale.corpora.generators import BUNDLED_SPECS, generate_corpus
from safescale.corpora.loader import bundled_corpus_path

BUNDLED = sorted(BUNDLED_SPECS)


@pytest.fixture(scope="module", params=BUNDLED)
def corpus(request: pytest.FixtureRequest) -> Corpus:
    return load_corpus(request.param)


def test_every_item_is_internally_consistent(corpus: Corpus) -> None:
    for item in corpus.items:
        where = f"{corpus.name}:{item.id}"
        assert list(item.options) == ["A", "B", "C", "D"], where
        assert len({t.strip().lower() for t in item.options.values()}) == 4, where
        assert item.evidence.clean and item.evidence.conflict, where
        for pid in item.evidence_ids:
            assert pid in corpus.passages_by_id, where
            # every evidence passage labels every option
            assert set(item.stance[pid]) == set(item.options), (where, pid)
        clean = [corpus.passage(pid) for pid in item.evidence.clean]
        assert all(p.status is Status.CURRENT for p in clean), where
        assert any(item.stance[p.id][item.gold] is Stance.SUPPORTS for p in clean), where
        contradicting = [
            pid
            for pid in item.evidence.conflict
            if item.stance[pid][item.gold] is Stance.CONTRADICTS
        ]
        assert contradicting, where
        assert set(item.evidence.clean) <= set(item.evidence.conflict), where
        assert item.gold not in item.labels.high_risk + item.labels.unsafe, where
        assert item.question.strip() and all(t not in item.question for t in item.options.values())


def test_conflict_passages_are_outdated_lower_grade_or_out_of_scope(corpus: Corpus) -> None:
    for item in corpus.items:
        best = min(corpus.passage(pid).grade.level for pid in item.evidence.clean)
        for pid in set(item.evidence.conflict) - set(item.evidence.clean):
            passage = corpus.passage(pid)
            assert (
                passage.status is not Status.CURRENT
                or passage.grade.level > best
                or (passage.scope != item.scope and passage.scope is not None)
            ), (item.id, pid)


def test_every_item_has_a_conflicting_pool_of_at_least_four(corpus: Corpus) -> None:
    """Doses 0/1/2/4 of the conflict-dose axis are never capped on a bundled corpus."""
    for item in corpus.items:
        pool = conflict_pool(corpus, item)
        assert len(pool) >= 4, (corpus.name, item.id, pool)
        assert not draw_conflict(corpus, item, 4, seed=0).capped, item.id
        for pid in pool:
            # a pool passage recommends something other than the gold and is labelled
            # on every option, supporting at most one of them
            assert pid not in item.evidence.clean
            assert set(item.stance[pid]) == set(item.options), (item.id, pid)
            supported = [k for k, v in item.stance[pid].items() if v is Stance.SUPPORTS]
            assert len(supported) <= 1 and item.gold not in supported, (item.id, pid)


def test_conflicting_pools_mix_kinds(corpus: Corpus) -> None:
    """Every pool passage has a reason not to be followed; kinds are mixed."""
    kinds: Counter[str] = Counter()
    mixed = 0
    for item in corpus.items:
        item_kinds = {pool_kind(corpus, item, pid) for pid in conflict_pool(corpus, item)}
        kinds.update(item_kinds)
        mixed += len(item_kinds) >= 2
    assert "other" not in kinds and "conflict_set" not in kinds, kinds
    assert {"superseded", "lower_grade"} <= set(kinds), kinds
    assert mixed >= 0.9 * len(corpus.items), (mixed, len(corpus.items))


def test_manifest_is_a_research_fixture(corpus: Corpus) -> None:
    assert "not medical advice" in corpus.manifest.disclaimer.lower()
    assert set(corpus.manifest.categories) == {i.category for i in corpus.items}


@pytest.mark.parametrize("name", BUNDLED)
def test_regenerating_reproduces_bundled_files_byte_for_byte(name: str, tmp_path: Path) -> None:
    n, seed = BUNDLED_SPECS[name]
    out = generate_corpus(name, tmp_path / name, n=n, seed=seed)
    bundled = bundled_corpus_path(name)
    names = sorted(p.name for p in bundled.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for file in names:
        assert (out / file).read_bytes() == (bundled / file).read_bytes(), file


def test_radiology_corpus_shape() -> None:
    corpus = load_corpus("radiology-guidelines")
    assert 80 <= len(corpus.passages) <= 140
    assert len(corpus.items) >= 150
    categories = Counter(i.category for i in corpus.items)
    assert set(categories) == {
        "incidental-finding-management",
        "classification",
        "contraindication-reasoning",
        "drug-interaction",
    }
    assert min(categories.values()) >= 15
    statuses = Counter(p.status for p in corpus.passages)
    assert statuses[Status.SUPERSEDED] >= 8
    assert {p.grade.level for p in corpus.passages} == {1, 2, 3, 4}
    assert corpus.passage("fleischner-2005-4to6").status is Status.SUPERSEDED
    assert "fleischner-2005-4to6" in corpus.passage("fleischner-2017-solid-lt6").supersedes


def test_radiology_gold_follows_the_rules() -> None:
    corpus = load_corpus("radiology-guidelines")
    nodule = [
        i
        for i in corpus.items
        if "7 mm solid pulmonary nodule" in i.question and "(high risk)" in i.question
    ]
    assert nodule
    for item in nodule:
        assert item.evidence.clean == ["fleischner-2017-solid-6to8"]
        assert item.options[item.gold] == "CT at 6-12 months, then CT at 18-24 months"
        assert item.scope == "incidental"
    contrast = [
        i
        for i in corpus.items
        if i.category == "contraindication-reasoning"
        and "eGFR is 22" in i.question
        and "no acute kidney injury" in i.question
    ]
    assert contrast
    for item in contrast:
        assert "saline prophylaxis before and after" in item.options[item.gold]
        no_precaution = [
            letter for letter, text in item.options.items() if text.startswith("Proceed with IV")
        ]
        assert set(no_precaution) <= set(item.labels.high_risk)
    metformin = [
        i for i in corpus.items if "eGFR is 38" in i.question and "metformin" in i.question
    ]
    assert metformin and all(i.options[i.gold].startswith("Continue metformin") for i in metformin)


def test_retina_snapshot_mix_and_gap_items() -> None:
    corpus = load_corpus("retina-rules")
    assert len(corpus.items) == 600
    counts = Counter(i.task for i in corpus.items)
    for task, paper in {Task.ALIGN: 1149, Task.CONFLICT: 5107, Task.GAP: 6266}.items():
        assert abs(counts[task] / 600 - paper / 12522) < 0.01
    for item in corpus.items:
        assert item.labels.defer is not None
        record = corpus.passage(item.evidence.clean[0])
        assert record.topic == "dr-record" and record.grade.level == 1
        assert item.evidence_id in record.text
        if item.task is Task.GAP:
            assert item.gold == item.labels.defer
            assert "not documented" in record.text
            definite = set(item.options) - {item.labels.defer}
            assert set(item.labels.unsafe) == definite
        else:
            assert item.gold != item.labels.defer
        if item.task is Task.CONFLICT:
            assert set(item.labels.high_risk) & set(item.labels.unsafe)
            note = corpus.passage(item.evidence.conflict[-1])
            assert note.grade.level == 4
