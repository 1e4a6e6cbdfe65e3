"""Condition graphs defined outside the safescale package, named in test configs by
import path (``fixtures_conditions:build_graph``): one that keeps the contract and
uses a custom node beside the public blocks, and ones that break it."""

from __future__ import annotations

import operator
import time
from typing import Annotated, TypedDict

from langgraph.runtime import Runtime

from safescale.agents.blocks import (
    END,
    START,
    AgentContext,
    AgentState,
    StateGraph,
    answer_node,
    filter_node,
    item_of,
    retrieve_node,
    step_record,
)


def keep_top_two(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """A custom node: keep the two best-ranked passages of the evidence."""
    started = time.perf_counter()
    ctx = runtime.context
    evidence = state.get("evidence", [])
    kept, cut = evidence[:2], [e["id"] for e in evidence[2:]]
    step = step_record(
        state,
        ctx,
        "keep_top_two",
        started,
        inputs=[item_of(state, ctx).id, [e["id"] for e in evidence]],
        retrieved=evidence,
        decision=f"kept {len(kept)}",
        kept=[e["id"] for e in kept],
        dropped=cut,
    )
    return {"evidence": kept, "steps": [step]}


def build_graph(checkpointer=None):
    """retrieve -> filter (current only) -> keep_top_two -> answer."""
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("retrieve", retrieve_node(agentic=False))
    graph.add_node("filter", filter_node())
    graph.add_node("keep_top_two", keep_top_two)
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "filter")
    graph.add_edge("filter", "keep_top_two")
    graph.add_edge("keep_top_two", "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="top_two_rag")


class ThinState(TypedDict, total=False):
    item_id: str
    answer: dict
    steps: list[dict]  # overwritten, not accumulated


def build_bad_graph(checkpointer=None):
    """Breaks the contract: a thin state (no evidence/excluded, steps overwrite), no
    context schema and no answer node."""

    def guess(state: ThinState) -> dict:
        return {"answer": {"chosen": "A"}}

    graph = StateGraph(ThinState)
    graph.add_node("guess", guess)
    graph.add_edge(START, "guess")
    graph.add_edge("guess", END)
    return graph.compile(checkpointer=checkpointer, name="bad_rag")


def build_unnamed_graph(checkpointer=None):
    """Keeps the contract but for the name: compiled without ``name=``."""
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer)


class AccumulatingState(AgentState):
    """AgentState extended with a key of the condition's own (allowed)."""

    notes: Annotated[list[str], operator.add]


def build_impostor_graph(checkpointer=None):
    """Keeps the contract but takes a bundled condition's name."""
    graph = StateGraph(AccumulatingState, context_schema=AgentContext)
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="standard_rag")
