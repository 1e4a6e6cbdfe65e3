"""Standard RAG: top-k by similarity (no filters, no reranking), then the answer."""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph

from safescale.agents.context import AgentContext
from safescale.agents.nodes import answer_node, retrieve_node
from safescale.agents.registry import condition
from safescale.agents.state import AgentState


@condition("standard_rag")
def build_graph(checkpointer=None):
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("retrieve", retrieve_node(agentic=False))
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="standard_rag")
