"""Agentic RAG: retrieve -> critique -> (re-query | synthesize) -> answer.

The loop is bounded by ``settings.max_steps`` retrieval rounds: the router sends the
graph to ``synthesize`` once the budget is spent, whatever the critic says, so it
always ends by its own rule (never by LangGraph's recursion limit). ``synthesize``
records why gathering stopped: ``enough evidence``, ``budget`` or ``nothing
relevant`` (plus ``unresolved conflict surfaced`` when the critic found one).
"""

from __future__ import annotations

from typing import Literal

from langgraph.runtime import Runtime

from safescale.agents.blocks import (
    END,
    START,
    AgentContext,
    AgentState,
    StateGraph,
    answer_node,
    critique_node,
    requery_node,
    retrieve_node,
    synthesize_node,
)
from safescale.agents.registry import condition


def route_after_critique(
    state: AgentState, runtime: Runtime[AgentContext]
) -> Literal["requery", "synthesize"]:
    """Re-query only while the critic asks for it and the round budget allows."""
    wants_more = state.get("critique", {}).get("decision") == "requery"
    if wants_more and state.get("round", 0) < runtime.context.settings.max_steps:
        return "requery"
    return "synthesize"


@condition("agentic_rag")
def build_graph(checkpointer=None):
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("retrieve", retrieve_node(agentic=True))
    graph.add_node("critique", critique_node)
    graph.add_node("requery", requery_node)
    graph.add_node("synthesize", synthesize_node)
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "critique")
    graph.add_conditional_edges("critique", route_after_critique)
    graph.add_edge("requery", "retrieve")
    graph.add_edge("synthesize", "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="agentic_rag")
