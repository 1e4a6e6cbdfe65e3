"""Corrective RAG as a safescale condition: an LM retrieval evaluator that triggers a
query rewrite and a second retrieval when the evidence is judged weak.

A small variant of CRAG (Yan et al., 2024, "Corrective Retrieval Augmented
Generation"). CRAG grades each retrieved document with a retrieval evaluator. When some
document is judged relevant ("correct"), the irrelevant ones are dropped ("knowledge
refinement"); when none is ("incorrect"), the retrieved documents are discarded and
the answer uses a new search with a rewritten query (web search in the paper, the
evidence store here). Graph::

    START -> retrieve -> evaluate --(weak)--> rewrite -> retrieve_again -> answer -> END
                                  \\--(some passage judged relevant)--> answer

``evaluate`` is safescale's critique block with this file's critic,
:func:`retrieval_evaluator`: the LM judges each passage "relevant" / "not relevant",
read as continuations with PMI normalization and calibrated against an "N/A" passage
(``judge``, the same judge as the agentic critic's relevance check). ``rewrite`` is
the ``requery`` block (the LM rewrites the query) and ``retrieve_again`` the retrieve
block searching with the rewritten query; its passages are used as they come, as CRAG
uses its web results. Unlike ``agentic_rag`` there are no metadata rules (status,
grade, scope), no loop and no synthesis: one LM-triggered correction per item at most.

Run it beside the bundled conditions (the config finds this file in its own
directory, from any working directory)::

    safescale run examples/crag.yaml --limit 6
"""

from __future__ import annotations

from typing import Literal

from safescale.agents import prompts
from safescale.agents.blocks import (
    END,
    START,
    AgentContext,
    AgentState,
    Critique,
    StateGraph,
    answer_node,
    judge,
    make_critique_node,
    requery_node,
    retrieve_node,
)
from safescale.corpora import Item


def retrieval_evaluator(item: Item, evidence_ids: list[str], ctx: AgentContext) -> Critique:
    """Keep the passages the LM judges relevant; ``requery`` when none is."""
    passages = [ctx.corpus.passage(pid) for pid in evidence_ids]
    margins: list[float] = []
    tokens = 0
    if passages:
        messages = [
            prompts.RELEVANCE.render(passage=prompts.passage_line(1, p), question=item.question)
            for p in passages
        ]
        margins, tokens = judge(
            ctx,
            messages,
            prompts.RELEVANCE_ANSWERS,
            baseline=prompts.RELEVANCE.render(passage="N/A", question=item.question),
        )
    # margin > 0: "not relevant" wins
    relevance = {p.id: -m for p, m in zip(passages, margins, strict=True)}
    keep = [pid for pid in evidence_ids if relevance[pid] > 0]
    drop = {pid: "judged irrelevant" for pid in evidence_ids if relevance[pid] <= 0}
    return Critique(
        keep=keep,
        drop=drop,
        decision="proceed" if keep else "requery",
        detail={
            "relevance_margin": relevance,
            "judgement": f"cloze PMI, calibrated on N/A (relevance v{prompts.RELEVANCE.version})",
        },
        prompt_tokens=tokens,
    )


def route_after_evaluation(state: AgentState) -> Literal["rewrite", "answer"]:
    """Correct weak evidence (nothing judged relevant); otherwise answer with the kept."""
    weak = state.get("critique", {}).get("decision") == "requery"
    return "rewrite" if weak else "answer"


def build_graph(checkpointer=None):
    """The corrective-RAG condition, recorded as ``crag``."""
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("retrieve", retrieve_node(agentic=False))
    graph.add_node("evaluate", make_critique_node(retrieval_evaluator))
    graph.add_node("rewrite", requery_node)
    graph.add_node("retrieve_again", retrieve_node(agentic=False))
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "evaluate")
    graph.add_conditional_edges("evaluate", route_after_evaluation)
    graph.add_edge("rewrite", "retrieve_again")
    graph.add_edge("retrieve_again", "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="crag")
