"""Run one item through one condition graph and turn the final state into records."""

from __future__ import annotations

import time
from collections.abc import Sequence

from langgraph.graph.state import CompiledStateGraph

from safescale.agents.context import AgentContext
from safescale.rundir import ResponseRecord, SampleRecord, StepRecord

__all__ = ["answer_item", "records_from_state", "thread_id"]


def thread_id(
    model: str,
    corpus: str,
    condition: str,
    samples: int,
    item: str,
    dose: int = 0,
    *,
    axes: Sequence[tuple[str, object]] = (),
) -> str:
    """Checkpoint thread of one item under one condition (and model/corpus/budget/dose;
    dose 0 keeps the thread name it had before the dose axis). ``axes`` adds a
    ``|<tag><value>`` part per further swept axis (e.g. ``("c", 1024)``, ``("k", 4)``);
    a run that sweeps none keeps the names it had before them."""
    suffix = f"|d{dose}" if dose else ""
    suffix += "".join(f"|{tag}{value}" for tag, value in axes)
    return f"{model}|{corpus}|{condition}|x{samples}|{item}{suffix}"


def recursion_limit(ctx: AgentContext) -> int:
    """Enough super-steps for the agentic loop's own budget (it stops itself first)."""
    return 4 * ctx.settings.max_steps + 16


def answer_item(
    graph: CompiledStateGraph,
    condition: str,
    item_id: str,
    ctx: AgentContext,
    *,
    model: str,
    thread: str | None = None,
) -> tuple[ResponseRecord, list[StepRecord]]:
    """Invoke ``graph`` for one item; return its frozen response and its steps.

    ``thread`` is the checkpoint thread (default: :func:`thread_id` of the model,
    corpus, condition, budget, item and dose).
    """
    started = time.perf_counter()
    if thread is None:
        thread = thread_id(
            model,
            ctx.corpus.name,
            condition,
            ctx.settings.samples,
            item_id,
            ctx.settings.conflict_dose,
        )
    config = {
        "configurable": {"thread_id": thread},
        "recursion_limit": recursion_limit(ctx),
    }
    state = graph.invoke({"item_id": item_id}, config, context=ctx)
    wall_ms = (time.perf_counter() - started) * 1e3
    return records_from_state(state, condition, ctx, model=model, wall_ms=wall_ms)


def records_from_state(
    state: dict, condition: str, ctx: AgentContext, *, model: str, wall_ms: float
) -> tuple[ResponseRecord, list[StepRecord]]:
    """Build the ResponseRecord and StepRecords from a final graph state."""
    if "answer" not in state:
        raise RuntimeError(
            f"condition {condition!r} ended item {state.get('item_id')!r} without an answer "
            "(its graph must end with the answer block; see safescale.agents.contract)"
        )
    answer = state["answer"]
    injection = state.get("conflict_injection") or {}
    steps = [
        StepRecord(
            run=ctx.run_id,
            condition=condition,
            model=model,
            samples_budget=ctx.settings.samples,
            conflict_dose=ctx.settings.conflict_dose,
            context_budget=ctx.settings.context_budget,
            retrieval_k=ctx.settings.k,
            **step,
        )
        for step in state.get("steps", [])
    ]
    response = ResponseRecord(
        run=ctx.run_id,
        model=model,
        condition=condition,
        item=state["item_id"],
        samples_budget=ctx.settings.samples,
        conflict_dose=ctx.settings.conflict_dose,
        context_budget=ctx.settings.context_budget,
        retrieval_k=ctx.settings.k,
        conflict_injected=list(injection.get("ids", [])),
        dose_capped=bool(injection.get("capped", False)),
        letters=answer["letters"],
        formulation=answer["formulation"],
        option_logits=answer["option_logits"],
        chosen=answer["chosen"],
        vote_share=answer["vote_share"],
        response=answer["response"],
        message=answer["message"],
        message_noctx=answer["message_noctx"],
        evidence_ids=[e["id"] for e in state.get("evidence", [])],
        cited_ids=state.get("cited_ids", []),
        samples=[SampleRecord(**s) for s in answer["samples"]],
        stop_reason=state.get("stop_reason"),
        prompt_tokens=sum(s.prompt_tokens for s in steps),
        completion_tokens=sum(s.completion_tokens for s in steps),
        wall_ms=wall_ms,
    )
    return response, steps
