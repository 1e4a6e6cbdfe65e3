"""What-if replay: fork a finished thread after its evidence step, without a passage.

The fork starts from the checkpoint written right after the first evidence-gathering
node (oracle set, retrieval or packing), removes the passage from the evidence and
marks it excluded (later retrievals skip it too), and re-runs only the downstream
nodes. LM calls whose prompts did not change are answered by the LM cache.
"""

from __future__ import annotations

import itertools
import time

from langgraph.graph.state import CompiledStateGraph

from safescale.agents.context import AgentContext
from safescale.agents.run import records_from_state, recursion_limit
from safescale.rundir import ResponseRecord, StepRecord

__all__ = ["EVIDENCE_NODES", "ReplayError", "replay_without"]

EVIDENCE_NODES = ("gather", "retrieve", "pack")


class ReplayError(RuntimeError):
    """The thread cannot be forked as asked."""


def replay_without(
    graph: CompiledStateGraph,
    ctx: AgentContext,
    thread: str,
    passage_ids: list[str],
    *,
    condition: str,
    model: str,
) -> tuple[ResponseRecord, list[StepRecord], int]:
    """Re-run a finished thread from after its evidence step without ``passage_ids``.

    Returns:
        The new response, its steps, and the step index the fork started after.
    """
    config = {"configurable": {"thread_id": thread}}
    history = list(graph.get_state_history(config))[::-1]  # oldest first
    if not history:
        raise ReplayError(f"no checkpoints for thread {thread!r}")
    fork = None
    for before, after in itertools.pairwise(history):
        if before.next and before.next[0] in EVIDENCE_NODES:
            fork, node = after, before.next[0]
            break
    if fork is None:
        raise ReplayError(f"condition {condition!r} has no evidence step to fork after")
    evidence = fork.values.get("evidence", [])
    present = {e["id"] for e in evidence} | {e["id"] for e in fork.values.get("candidates", [])}
    missing = [pid for pid in passage_ids if pid not in present]
    if missing:
        raise ReplayError(
            f"passage(s) {', '.join(missing)} were not in the evidence after {node!r}; "
            f"present: {', '.join(sorted(present)) or 'none'}"
        )
    update = {
        "evidence": [e for e in evidence if e["id"] not in passage_ids],
        "excluded": sorted(set(fork.values.get("excluded", [])) | set(passage_ids)),
    }
    new_config = graph.update_state(fork.config, update, as_node=node)
    new_config = {**new_config, "recursion_limit": recursion_limit(ctx)}
    started = time.perf_counter()
    state = graph.invoke(None, new_config, context=ctx)
    wall_ms = (time.perf_counter() - started) * 1e3
    response, steps = records_from_state(state, condition, ctx, model=model, wall_ms=wall_ms)
    return response, steps, len(fork.values.get("steps", [])) - 1
