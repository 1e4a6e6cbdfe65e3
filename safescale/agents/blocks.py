"""Public building blocks of condition graphs (the contract is in
:mod:`safescale.agents.contract`).

The six bundled conditions are built from these blocks only; an external condition
imports them from here::

    from safescale.agents.blocks import (
        END, START, AgentContext, AgentState, StateGraph, answer_node, retrieve_node,
    )

    def build_graph(checkpointer=None):
        graph = StateGraph(AgentState, context_schema=AgentContext)
        graph.add_node("retrieve", retrieve_node(agentic=False))
        graph.add_node("answer", answer_node)
        graph.add_edge(START, "retrieve")
        graph.add_edge("retrieve", "answer")
        graph.add_edge("answer", END)
        return graph.compile(checkpointer=checkpointer, name="my_rag")

Nodes (each appends one step record named as in brackets):

* :func:`retrieve_node` [``retrieve``]: top-k from the evidence store, searching with
  ``state["query"]`` (or the question); ``agentic=True`` keeps current passages and
  reranks by grade.
* :func:`filter_node` [``filter``]: drop passages of the evidence by status and grade.
* :func:`critique_node` / :func:`make_critique_node` [``critique``]: a critic
  (rules and/or LM judgements) keeps, drops and decides ``requery`` / ``proceed``.
* :func:`requery_node` [``requery``]: the LM rewrites the query.
* :func:`synthesize_node` [``synthesize``]: a cited summary of the evidence.
* :func:`pack_context_node` [``pack_context``]: as many passages as fit the budget.
* :func:`oracle_evidence_node` [``clean_evidence`` / ``conflict_evidence``].
* :func:`answer_node` [``answer``]: the answer under the run's formulation.

Helpers for your own nodes: :func:`step_record`, :func:`judge`, :func:`item_of`,
:func:`passages_of`, and the versioned :class:`~safescale.agents.prompts.Prompt`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from safescale.agents.context import AgentContext, AgentSettings, Critic, Critique
from safescale.agents.nodes import (
    Node,
    answer_node,
    critique_node,
    default_critic,
    item_of,
    judge,
    make_critique_node,
    oracle_evidence_node,
    pack_context_node,
    passages_of,
    requery_node,
    retrieve_node,
    step_record,
    synthesize_node,
)
from safescale.agents.prompts import Prompt
from safescale.agents.state import AgentState, EvidenceRef
from safescale.corpora import Status

__all__ = [
    "END",
    "START",
    "AgentContext",
    "AgentSettings",
    "AgentState",
    "Critic",
    "Critique",
    "EvidenceRef",
    "Node",
    "Prompt",
    "StateGraph",
    "answer_node",
    "critique_node",
    "default_critic",
    "filter_node",
    "item_of",
    "judge",
    "make_critique_node",
    "oracle_evidence_node",
    "pack_context_node",
    "passages_of",
    "requery_node",
    "retrieve_node",
    "step_record",
    "synthesize_node",
]


def filter_node(
    *,
    statuses: Iterable[Status | str] = (Status.CURRENT,),
    weakest_level: int | None = None,
) -> Node:
    """Keep only evidence passages of the given statuses and at least the given grade.

    Args:
        statuses: statuses kept (default: current only).
        weakest_level: keep grade levels ``<= weakest_level`` (1 is the strongest
            evidence, 4 the weakest); None keeps every level.

    Dropped passages are recorded in ``dropped`` with the reason (their status or
    ``low-grade``); the step is named ``filter``.
    """
    keep_status = {Status(s) for s in statuses}

    def filter_evidence(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
        started = time.perf_counter()
        ctx = runtime.context
        evidence = state.get("evidence", [])
        kept: list[EvidenceRef] = []
        reasons: dict[str, str] = {}
        for ref in evidence:
            passage = ctx.corpus.passage(ref["id"])
            if passage.status not in keep_status:
                reasons[passage.id] = passage.status.value
            elif weakest_level is not None and passage.grade.level > weakest_level:
                reasons[passage.id] = "low-grade"
            else:
                kept.append(ref)
        step = step_record(
            state,
            ctx,
            "filter",
            started,
            inputs=[[e["id"] for e in evidence], sorted(keep_status), weakest_level],
            retrieved=evidence,
            decision=f"kept {len(kept)}, dropped {len(reasons)}",
            kept=[e["id"] for e in kept],
            dropped=sorted(reasons),
            detail={"reasons": reasons},
        )
        return {
            "evidence": kept,
            "dropped": [{"id": pid, "reason": why} for pid, why in reasons.items()],
            "steps": [step],
        }

    return filter_evidence
