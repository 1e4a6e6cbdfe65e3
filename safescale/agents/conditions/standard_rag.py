"""Standard RAG: top-k by similarity (no filters, no reranking), then the answer."""

from __future__ import annotations

from safescale.agents.blocks import (
    END,
    START,
    AgentContext,
    AgentState,
    StateGraph,
    answer_node,
    retrieve_node,
)
from safescale.agents.registry import condition


@condition("standard_rag")
def build_graph(checkpointer=None):
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("retrieve", retrieve_node(agentic=False))
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="standard_rag")
