"""Conflict evidence: the item's oracle ``conflict`` evidence set, then the answer."""

from __future__ import annotations

from safescale.agents.blocks import (
    END,
    START,
    AgentContext,
    AgentState,
    StateGraph,
    answer_node,
    oracle_evidence_node,
)
from safescale.agents.registry import condition


@condition("conflict_evidence")
def build_graph(checkpointer=None):
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("gather", oracle_evidence_node("conflict"))
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "gather")
    graph.add_edge("gather", "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="conflict_evidence")
