"""Max-context's corpus order and the runner's answering order (no model): the config
keys, what they do to the config hash, the documented corpus order and leave-out
order on the bundled corpus, and the order a shard's items are answered in."""

from __future__ import annotations

from itertools import pairwise

import pytest

from safescale.agents.nodes import corpus_order, leave_out_sequence
from safescale.corpora import Status, load_corpus
from safescale.experiments.config import ConfigError, parse_config
from safescale.experiments.runner import CellTask, answer_order

BASE = "name: x\nmodels: [m]\ncorpus: radiology-guidelines\n"


def test_order_defaults_to_similarity_and_a_bad_value_names_the_key():
    assert parse_config(BASE).max_context.order == "similarity"
    assert parse_config(BASE + "max_context: {order: corpus}\n").max_context.order == "corpus"
    with pytest.raises(ConfigError, match=r":4: max_context\.order: .*'similarity'"):
        parse_config(BASE + "max_context: {order: topic}\n")
    with pytest.raises(ConfigError, match="did you mean 'order'"):
        parse_config(BASE + "max_context: {ordre: corpus}\n")
    with pytest.raises(ConfigError, match=r"models\[0\]\.prefix_cache_mb"):
        parse_config(
            "name: x\nmodels: [{name: m, prefix_cache_mb: -1}]\ncorpus: radiology-guidelines\n"
        )


def test_the_hash_follows_what_changes_answers():
    plain = parse_config(BASE).config_hash()
    # runs made before the section existed packed by similarity: their hash is kept
    assert parse_config(BASE + "max_context: {order: similarity}\n").config_hash() == plain
    assert parse_config(BASE + "max_context: {order: corpus}\n").config_hash() != plain
    # the prefix cache changes how prompts are computed, not the answers
    cached = "name: x\nmodels: [{name: m, prefix_cache_mb: 0}]\ncorpus: radiology-guidelines\n"
    assert parse_config(cached).config_hash() == plain
    assert parse_config(BASE).models[0].prefix_cache_mb > 0  # on by default in runs


def test_corpus_order_is_topic_then_grade_then_newest_on_the_bundled_corpus():
    corpus = load_corpus("radiology-guidelines")
    ordered = corpus_order(list(corpus.passages))
    assert sorted(p.id for p in ordered) == sorted(p.id for p in corpus.passages)
    assert [p.id for p in corpus_order(list(reversed(corpus.passages)))] == [p.id for p in ordered]
    for a, b in pairwise(ordered):
        assert (a.topic or "") <= (b.topic or "")
        if a.topic == b.topic:
            assert a.grade.level <= b.grade.level
            if a.grade.level == b.grade.level and a.source.date and b.source.date:
                assert a.source.date >= b.source.date


def test_what_is_left_out_first_is_withdrawn_then_superseded_then_weak():
    corpus = load_corpus("radiology-guidelines")
    sequence = leave_out_sequence(corpus_order(list(corpus.passages)))
    rank = {Status.WITHDRAWN: 0, Status.SUPERSEDED: 1, Status.CURRENT: 2}
    statuses = [rank[Status(p.status)] for p in sequence]
    assert statuses == sorted(statuses)
    assert statuses[0] < 2  # the bundled corpus has outdated sources: they go first
    current = [p for p in sequence if Status(p.status) is Status.CURRENT]
    levels = [p.grade.level for p in current]
    assert levels == sorted(levels, reverse=True)  # the weakest current evidence next


def test_a_shard_is_answered_with_shared_evidence_together_and_keeps_its_items():
    corpus = load_corpus("radiology-guidelines")
    ids = tuple(f"rad-000{i}" for i in range(1, 7))
    conflict = CellTask("m", "radiology-guidelines", "conflict_evidence", 1, ids)
    order = answer_order(conflict, corpus)
    assert order == ["rad-0001", "rad-0002", "rad-0003", "rad-0004", "rad-0006", "rad-0005"]
    for condition in ("closed_book", "clean_evidence"):  # nothing to regroup: shard order
        task = CellTask("m", "radiology-guidelines", condition, 1, ids)
        assert answer_order(task, corpus) == list(ids)
    mixed = tuple(corpus.items[i].id for i in (0, 30, 1, 31, 2))
    task = CellTask("m", "radiology-guidelines", "max_context", 1, mixed)
    assert answer_order(task, corpus, max_context_order="corpus") == list(mixed)
    by_group = answer_order(task, corpus)  # similarity: by the items' clean evidence
    assert by_group == [mixed[0], mixed[2], mixed[4], mixed[1], mixed[3]]
    assert sorted(by_group) == sorted(mixed)
