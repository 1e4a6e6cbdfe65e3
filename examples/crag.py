"""Corrective RAG as a safescale condition: an LM retrieval evaluator that triggers a
query rewrite and a second retrieval when the evidence is judged weak.

A small variant of CRAG (Yan et al., 2024, "Corrective Retrieval Augmented
Generation"). CRAG grades each retrieved document with a retrieval evaluator and, when
no document is judged relevant ("incorrect"), discards them and searches again with a
rewritten query (web search in the paper; the evidence store here). Graph::

    START -> retrieve -> evaluate --(weak, first round)--> rewrite -> retrieve
                                  \\--(relevant evidence, or corrected once)--> answer -> END

``evaluate`` is safescale's critique block with this file's critic,
:func:`retrieval_evaluator`: the LM judges each passage "relevant" / "not relevant",
read as continuations with PMI normalization (``judge``, the same judge as the
agentic critic's relevance check). Passages judged irrelevant are dropped ("knowledge
refinement"); the evidence is *weak* when none is left, and then -- once per item --
``rewrite`` (the LM rewrites the query; the ``requery`` block) and a second
``retrieve`` follow, whose passages are evaluated the same way. Unlike
``agentic_rag`` there are no metadata rules (status, grade, scope) and no synthesis:
the correction is driven by the LM evaluator alone.

Run it beside the bundled conditions (from the repository root)::

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

#: Query rewrites (second retrievals) per item.
CORRECTIONS = 1


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
        margins, tokens = judge(ctx, messages, prompts.RELEVANCE_ANSWERS)
    # margin > 0: "not relevant" wins
    relevance = {p.id: -m for p, m in zip(passages, margins, strict=True)}
    keep = [pid for pid in evidence_ids if relevance[pid] > 0]
    drop = {pid: "judged irrelevant" for pid in evidence_ids if relevance[pid] <= 0}
    return Critique(
        keep=keep,
        drop=drop,
        decision="proceed" if keep else "requery",
        detail={"relevance_margin": relevance, "judgement": "cloze PMI (relevance v2)"},
        prompt_tokens=tokens,
    )


def route_after_evaluation(state: AgentState) -> Literal["rewrite", "answer"]:
    """Correct weak evidence once; otherwise answer with what was judged relevant."""
    weak = state.get("critique", {}).get("decision") == "requery"
    if weak and state.get("round", 0) <= CORRECTIONS:
        return "rewrite"
    return "answer"


def build_graph(checkpointer=None):
    """The corrective-RAG condition, recorded as ``crag``."""
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("retrieve", retrieve_node(agentic=False))
    graph.add_node("evaluate", make_critique_node(retrieval_evaluator))
    graph.add_node("rewrite", requery_node)
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "retrieve")
    graph.add_edge("retrieve", "evaluate")
    graph.add_conditional_edges("evaluate", route_after_evaluation)
    graph.add_edge("rewrite", "retrieve")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="crag")
