"""HyDE as a safescale condition: retrieve with an LM-written hypothetical passage.

HyDE (Gao et al., 2023, "Precise Zero-Shot Dense Retrieval without Relevance Labels")
asks the LM for a passage that *would* answer the question and retrieves with the
embedding of that hypothetical document instead of the question's: the evidence store
embeds the generated text when it is the search query. Graph::

    START -> hypothesize -> retrieve -> answer -> END

``hypothesize`` is this file's own node; ``retrieve`` (top-k by similarity, every
status, no reranking: standard RAG's retrieval) and ``answer`` are safescale's public
blocks, so HyDE differs from ``standard_rag`` only in the query. The retrieve step
records the hypothetical passage as its query, so the trace shows what was searched.

Run it beside the bundled conditions (the config finds this file in its own
directory, from any working directory)::

    safescale run examples/hyde.yaml --limit 6
"""

from __future__ import annotations

import time

from langgraph.runtime import Runtime

from safescale.agents.blocks import (
    END,
    START,
    AgentContext,
    AgentState,
    Prompt,
    StateGraph,
    answer_node,
    item_of,
    retrieve_node,
    step_record,
)

HYPOTHETICAL_PASSAGE = Prompt(
    "hyde_passage",
    1,
    "Write a short passage from a clinical guideline that answers this question.\n"
    "Question: {question}",
)


def hypothesize(state: AgentState, runtime: Runtime[AgentContext]) -> dict:
    """Generate the hypothetical passage (greedy) and make it the retrieval query."""
    started = time.perf_counter()
    ctx = runtime.context
    item = item_of(state, ctx)
    message = HYPOTHETICAL_PASSAGE.render(question=item.question)
    (generation,) = ctx.lm.generate([message], max_new_tokens=ctx.settings.synthesis_tokens)[0]
    passage = " ".join(generation.text.split()) or item.question
    step = step_record(
        state,
        ctx,
        "hypothesize",
        started,
        inputs=[item.id, message],
        prompt=HYPOTHETICAL_PASSAGE,
        prompt_text=message,
        output=passage,
        decision="search with the hypothetical passage",
        prompt_tokens=len(ctx.lm.prompt_ids(message)),
        completion_tokens=len(generation.token_ids),
    )
    return {"query": passage, "queries": [passage], "steps": [step]}


def build_graph(checkpointer=None):
    """The HyDE condition, recorded as ``hyde``."""
    graph = StateGraph(AgentState, context_schema=AgentContext)
    graph.add_node("hypothesize", hypothesize)
    graph.add_node("retrieve", retrieve_node(agentic=False))
    graph.add_node("answer", answer_node)
    graph.add_edge(START, "hypothesize")
    graph.add_edge("hypothesize", "retrieve")
    graph.add_edge("retrieve", "answer")
    graph.add_edge("answer", END)
    return graph.compile(checkpointer=checkpointer, name="hyde")
