"""Closed-book: the question alone."""

from __future__ import annotations

from safescale.agents.blocks import END, START, AgentContext, AgentState, StateGraph, answer_node
from safescale.agents.registry import condition


@condition("closed_book")
def build_graph(checkpointer=None):
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="closed_book")
