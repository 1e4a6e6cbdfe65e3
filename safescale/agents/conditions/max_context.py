"""Max-context: as many whole passages as fit the context budget (see
:func:`safescale.agents.nodes.pack_context_node` for the order and policy)."""

from __future__ import annotations

from safescale.agents.blocks import (
    END,
    START,
    AgentContext,
    AgentState,
    StateGraph,
    answer_node,
    pack_context_node,
)
from safescale.agents.registry import condition


@condition("max_context")
def build_graph(checkpointer=None):
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("pack", pack_context_node)
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "pack")
    graph.add_edge("pack", "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="max_context")
