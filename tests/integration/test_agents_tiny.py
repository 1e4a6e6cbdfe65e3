"""Condition graphs on a tiny random Llama, the bundled radiology corpus and a hashing
embedder store: plumbing, step records, loop bounds, context limits, replay."""

from __future__ import annotations

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from safescale.agents import (
    CONDITIONS,
    AgentContext,
    AgentSettings,
    CachedLM,
    Critique,
    ReplayError,
    answer_item,
    build_condition,
    replay_without,
    thread_id,
)
from safescale.corpora import load_corpus
from safescale.retrieval import EvidenceStore
from safescale.retrieval.testing import HashingEmbedder


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("radiology-guidelines")


@pytest.fixture(scope="module")
def store(corpus):
    return EvidenceStore.build(corpus, HashingEmbedder(dimension=128), "flat")


def _ctx(tiny_lm, corpus, store, **settings):
    return AgentContext(
        lm=CachedLM(tiny_lm),
        corpus=corpus,
        store=store,
        settings=AgentSettings(**{"context_budget": 900, **settings}),
    )


@pytest.mark.parametrize("condition", CONDITIONS)
def test_each_condition_answers_three_items_with_wellformed_steps(
    condition, tiny_lm, corpus, store
):
    ctx = _ctx(tiny_lm, corpus, store, max_steps=2)
    graph = build_condition(condition, InMemorySaver())
    for item in corpus.items[:3]:
        response, steps = answer_item(graph, condition, item.id, ctx, model="tiny")
        assert response.chosen in item.letters
        assert len(response.option_logits) == len(item.letters)
        assert (
            response.message_noctx in response.message
            or condition == "closed_book"
            or ("Evidence:" in response.message and "Evidence:" not in response.message_noctx)
        )
        assert [s.step for s in steps] == list(range(len(steps)))
        assert steps[-1].node == "answer"
        assert all(s.condition == condition and s.item == item.id for s in steps)
        assert all(len(s.inputs_digest) == 16 for s in steps)
        assert steps[-1].prompt_hash is not None
        if condition == "closed_book":
            assert response.evidence_ids == []
        if condition == "clean_evidence":
            assert response.evidence_ids == list(item.evidence.clean)
        if condition == "conflict_evidence":
            assert response.evidence_ids == list(item.evidence.conflict)
        if condition == "standard_rag":
            assert len(steps[0].retrieved) == ctx.settings.k
            assert [r.rank for r in steps[0].retrieved] == list(range(1, ctx.settings.k + 1))


class AlwaysRequery:
    def __init__(self):
        self.calls = 0

    def __call__(self, item, evidence_ids, ctx):
        self.calls += 1
        return Critique(keep=evidence_ids, decision="requery")


def test_agentic_loop_stops_at_max_steps_with_reason(tiny_lm, corpus, store):
    critic = AlwaysRequery()
    ctx = _ctx(tiny_lm, corpus, store, max_steps=3)
    ctx.critic = critic
    graph = build_condition("agentic_rag", InMemorySaver())
    response, steps = answer_item(graph, "agentic_rag", corpus.items[0].id, ctx, model="tiny")
    nodes = [s.node for s in steps]
    assert critic.calls == 3
    assert nodes.count("retrieve") == 3 and nodes.count("requery") == 2
    assert response.stop_reason.startswith("budget")
    assert nodes[-2:] == ["synthesize", "answer"]


def test_agentic_drops_superseded_when_retrieved(tiny_lm, corpus, store):
    ctx = _ctx(tiny_lm, corpus, store, include_superseded=True, k=8)
    graph = build_condition("agentic_rag", InMemorySaver())
    # an item about a nodule: the superseded Fleischner 2005 passages are near it
    item = next(i for i in corpus.items if "nodule" in i.question)
    _, steps = answer_item(graph, "agentic_rag", item.id, ctx, model="tiny")
    critique = next(s for s in steps if s.node == "critique")
    superseded = {r.id for r in critique.retrieved if r.status != "current"}
    assert superseded, "the store should surface superseded distractors for nodule items"
    assert superseded <= set(critique.dropped)
    assert all(critique.detail["reasons"][pid] == "superseded" for pid in superseded)


@pytest.mark.parametrize("budget", [700, 900, 4000])
def test_max_context_never_exceeds_the_limit(budget, tiny_lm, corpus, store):
    ctx = _ctx(tiny_lm, corpus, store, context_budget=budget, answer_reserve=16)
    graph = build_condition("max_context", InMemorySaver())
    response, steps = answer_item(graph, "max_context", corpus.items[5].id, ctx, model="tiny")
    limit = min(budget, tiny_lm.context_length) - 16
    assert len(tiny_lm.prompt_ids(response.message, answer_cue=True)) <= limit
    pack = steps[0]
    assert set(pack.kept) | set(pack.dropped) == {p.id for p in corpus.passages}
    assert pack.dropped, "a small budget must leave passages out"


def test_replay_without_a_passage_reruns_downstream_only(tiny_lm, corpus, store):
    ctx = _ctx(tiny_lm, corpus, store)
    graph = build_condition("standard_rag", InMemorySaver())
    item = corpus.items[0]
    old, _ = answer_item(graph, "standard_rag", item.id, ctx, model="tiny")
    dropped = old.evidence_ids[0]
    thread = thread_id("tiny", corpus.name, "standard_rag", 1, item.id)
    new, steps, fork_step = replay_without(
        graph, ctx, thread, [dropped], condition="standard_rag", model="tiny"
    )
    assert fork_step == 0
    assert dropped not in new.evidence_ids
    assert new.evidence_ids == old.evidence_ids[1:]
    assert [s.node for s in steps] == ["retrieve", "answer"]
    with pytest.raises(ReplayError, match="not in the evidence"):
        replay_without(
            graph, ctx, thread, ["no-such-passage"], condition="standard_rag", model="tiny"
        )


def test_replay_of_closed_book_is_refused(tiny_lm, corpus, store):
    ctx = _ctx(tiny_lm, corpus, store)
    graph = build_condition("closed_book", InMemorySaver())
    item = corpus.items[0]
    answer_item(graph, "closed_book", item.id, ctx, model="tiny")
    thread = thread_id("tiny", corpus.name, "closed_book", 1, item.id)
    with pytest.raises(ReplayError, match="no evidence step"):
        replay_without(graph, ctx, thread, ["x"], condition="closed_book", model="tiny")


def test_lm_cache_answers_repeated_calls(tiny_lm, corpus, store):
    ctx = _ctx(tiny_lm, corpus, store)
    graph = build_condition("clean_evidence", InMemorySaver())
    item = corpus.items[1]
    first, _ = answer_item(graph, "clean_evidence", item.id, ctx, model="tiny")
    misses = ctx.lm.misses
    again, _ = answer_item(graph, "clean_evidence", item.id, ctx, model="tiny")
    assert ctx.lm.misses == misses and ctx.lm.hits >= 1
    assert again.option_logits == first.option_logits


def test_majority_vote_with_samples(tiny_lm, corpus, store):
    ctx = _ctx(tiny_lm, corpus, store, samples=4, temperature=1.0)
    graph = build_condition("closed_book", InMemorySaver())
    response, _ = answer_item(graph, "closed_book", corpus.items[2].id, ctx, model="tiny")
    assert len(response.samples) == 4
    letters = [s.letter for s in response.samples if s.letter is not None]
    if letters:
        top = max(letters.count(x) for x in set(letters))
        assert response.vote_share == top / 4
        assert letters.count(response.chosen) == top
    else:
        assert response.vote_share == 0.0


def test_critic_judgements_are_pmi_continuations_shown_by_trace(tiny_lm, corpus, store):
    from rich.console import Console

    from safescale.agents import prompts, render_trace
    from safescale.agents.prompts import RELEVANCE_ANSWERS
    from safescale.models import NEUTRAL_MESSAGE

    ctx = _ctx(tiny_lm, corpus, store, k=3, max_steps=1)
    graph = build_condition("agentic_rag", checkpointer=InMemorySaver())
    item = corpus.items[2]
    response, steps = answer_item(graph, "agentic_rag", item.id, ctx, model="tiny")
    critique = next(s for s in steps if s.node == "critique")
    margins = critique.detail["relevance_margin"]
    assert margins, "the critic judged no passage"
    # each margin is pmi("relevant") - pmi("not relevant") on the real model
    lm = ctx.lm
    answers = list(RELEVANCE_ANSWERS)
    neutral = lm.score_continuations([NEUTRAL_MESSAGE], answers).logprob[0]

    def pmi_margin(message: str) -> float:
        cond = lm.score_continuations([message], answers).logprob[0]
        return (cond[0] - neutral[0]) - (cond[1] - neutral[1])

    # calibrated against the same prompt with an "N/A" passage
    offset = pmi_margin(prompts.RELEVANCE.render(passage="N/A", question=item.question))
    for pid, margin in margins.items():
        message = prompts.RELEVANCE.render(
            passage=prompts.passage_line(1, corpus.passage(pid)), question=item.question
        )
        assert margin == pytest.approx(pmi_margin(message) - offset, abs=1e-5)
        assert (pid in critique.kept) == (margin >= 0)
    console = Console(record=True, width=200)
    console.print(render_trace(item, response, steps))
    text = console.export_text()
    assert "relevance:" in text and f"{response.formulation} P:" in text
