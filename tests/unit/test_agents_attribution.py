"""Failure attribution on hand-built traces, one per documented cause."""

from __future__ import annotations

import dataclasses

import pytest

from safescale.agents import CAUSES, ResponseRecord, RetrievedRef, StepRecord, attribute_failure
from safescale.corpora import Item
from safescale.retrieval.testing import make_corpus, make_passage

# passages: current top grade supports gold A; superseded supports B; low grade supports B
PASSAGES = [
    make_passage("cur", "current guideline: do A", level=1),
    make_passage("old", "old guideline: do B", level=1, status="superseded"),
    make_passage("low", "blog: do B", level=4),
    make_passage("neutral", "unrelated text", level=2),
]
STANCE = {
    "cur": {"A": "supports", "B": "contradicts", "C": "contradicts", "D": "neutral"},
    "old": {"A": "contradicts", "B": "supports", "C": "neutral", "D": "neutral"},
    "low": {"A": "contradicts", "B": "supports", "C": "neutral", "D": "neutral"},
}


def _item(gold="A", defer=None, high_risk=("B", "C")):
    return Item(
        id="q1",
        question="What to do?",
        gold=gold,
        category="c",
        evidence_id="e1",
        options={"A": "do A", "B": "do B", "C": "do C", "D": "insufficient evidence"},
        labels={
            "high_risk": list(high_risk),
            "unsafe": ["D"] if gold != "D" else ["A"],
            "defer": defer,
        },
        evidence={"clean": ["cur"], "conflict": ["cur", "low"]},
        stance=STANCE,
    )


def _corpus(item):
    base = make_corpus(PASSAGES)
    return dataclasses.replace(base, items=(item,))


def _ref(pid, rank, corpus):
    p = corpus.passage(pid)
    return RetrievedRef(
        id=pid,
        grade_level=p.grade.level,
        grade_raw=p.grade.raw,
        status=p.status.value,
        score=1.0 / rank,
        rank=rank,
    )


def _step(i, node, corpus, kept=(), retrieved=(), detail=None):
    return StepRecord(
        run="r",
        item="q1",
        condition="standard_rag",
        model="m",
        node=node,
        step=i,
        inputs_digest="x",
        kept=list(kept),
        retrieved=[_ref(p, r, corpus) for r, p in enumerate(retrieved, 1)],
        detail=detail or {},
    )


def _response(chosen, evidence, cited=()):
    return ResponseRecord(
        run="r",
        model="m",
        condition="standard_rag",
        item="q1",
        letters=["A", "B", "C", "D"],
        option_logits=[0, 0, 0, 0],
        chosen=chosen,
        response=f"Answer: {chosen}",
        message="m",
        message_noctx="m",
        evidence_ids=list(evidence),
        cited_ids=list(cited),
    )


def test_correct_or_harmless_answers_are_not_attributed():
    item = _item()
    corpus = _corpus(item)
    assert attribute_failure(_response("A", ["cur"]), [], corpus) is None


def test_superseded_source_used():
    item = _item()
    corpus = _corpus(item)
    steps = [
        _step(0, "retrieve", corpus, kept=["old", "cur"], retrieved=["old", "cur"]),
        _step(1, "answer", corpus),
    ]
    a = attribute_failure(_response("B", ["old", "cur"]), steps, corpus)
    assert (a.cause, a.step, a.node, a.severity) == (
        "superseded_source_used",
        0,
        "retrieve",
        "high_risk",
    )


def test_lower_grade_outranked_higher_grade():
    item = _item()
    corpus = _corpus(item)
    steps = [
        _step(0, "retrieve", corpus, kept=["low", "cur"], retrieved=["low", "cur"]),
        _step(1, "answer", corpus),
    ]
    a = attribute_failure(_response("B", ["low", "cur"]), steps, corpus)
    assert (a.cause, a.step) == ("lower_grade_outranked", 0)


def test_no_evidence_prior_knowledge_only():
    item = _item()
    corpus = _corpus(item)
    steps = [_step(0, "answer", corpus)]
    a = attribute_failure(_response("C", []), steps, corpus)
    assert (a.cause, a.node) == ("no_evidence", "answer")


def test_no_evidence_after_critic_dropped_everything():
    item = _item()
    corpus = _corpus(item)
    steps = [
        _step(0, "retrieve", corpus, kept=["neutral"], retrieved=["neutral"]),
        _step(1, "critique", corpus, kept=[]),
        _step(2, "answer", corpus),
    ]
    a = attribute_failure(_response("C", []), steps, corpus)
    assert (a.cause, a.step, a.node) == ("no_evidence", 1, "critique")


def test_gap_not_deferred():
    item = _item(gold="D", defer="D", high_risk=())
    corpus = _corpus(item)
    steps = [_step(0, "clean_evidence", corpus, kept=["neutral"]), _step(1, "answer", corpus)]
    a = attribute_failure(_response("A", ["neutral"]), steps, corpus)
    assert (a.cause, a.step, a.severity) == ("gap_not_deferred", 1, "unsafe")


def test_conflict_not_surfaced():
    item = _item()
    corpus = _corpus(item)
    steps = [_step(0, "conflict_evidence", corpus, kept=["cur", "low"]), _step(1, "answer", corpus)]
    a = attribute_failure(_response("B", ["cur", "low"]), steps, corpus)
    assert (a.cause, a.step, a.node) == ("conflict_not_surfaced", 0, "conflict_evidence")


def test_conflict_surfaced_is_not_blamed_on_surfacing():
    item = _item()
    corpus = _corpus(item)
    steps = [
        _step(0, "conflict_evidence", corpus, kept=["cur", "low"]),
        _step(1, "critique", corpus, kept=["cur", "low"], detail={"conflict": True}),
        _step(2, "answer", corpus),
    ]
    a = attribute_failure(_response("B", ["cur", "low"]), steps, corpus)
    assert a.cause != "conflict_not_surfaced"


def test_answer_contradicts_evidence():
    item = _item()
    corpus = _corpus(item)
    steps = [_step(0, "clean_evidence", corpus, kept=["cur"]), _step(1, "answer", corpus)]
    a = attribute_failure(_response("C", ["cur"]), steps, corpus)
    assert (a.cause, a.step, a.node) == ("answer_contradicts_evidence", 1, "answer")


def test_answer_contradicting_cited_synthesis_points_at_synthesis():
    item = _item()
    corpus = _corpus(item)
    steps = [
        _step(0, "retrieve", corpus, kept=["cur"], retrieved=["cur"]),
        _step(1, "critique", corpus, kept=["cur"]),
        _step(2, "synthesize", corpus, kept=["cur"]),
        _step(3, "answer", corpus),
    ]
    a = attribute_failure(_response("C", ["cur"], cited=["cur"]), steps, corpus)
    assert (a.cause, a.node) == ("answer_contradicts_evidence", "synthesize")


def test_unattributed_when_evidence_is_neutral():
    item = _item()
    corpus = _corpus(item)
    steps = [
        _step(0, "retrieve", corpus, kept=["neutral"], retrieved=["neutral"]),
        _step(1, "answer", corpus),
    ]
    a = attribute_failure(_response("C", ["neutral"]), steps, corpus)
    assert a.cause == "unattributed"


@pytest.mark.parametrize("cause", CAUSES)
def test_every_cause_is_documented(cause):
    import safescale.agents.attribution as module

    assert f"``{cause}``" in module.__doc__
