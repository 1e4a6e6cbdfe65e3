"""The one typed state shared by every condition graph.

Values are plain JSON-like data (the checkpointer stores them). Lists that grow over a
run use ``operator.add`` reducers: nodes return only their new entries.
"""

from __future__ import annotations

import operator
from typing import Annotated, TypedDict

__all__ = ["AgentState", "EvidenceRef"]


class EvidenceRef(TypedDict):
    """A passage as it entered the state: id plus how it was found."""

    id: str
    score: float | None
    rank: int | None


class AgentState(TypedDict, total=False):
    """State of one item under one condition.

    Attributes:
        item_id: the item being answered.
        query: the current retrieval query.
        queries: every query issued (grows).
        candidates: passages returned by the latest retrieval.
        evidence: passages currently in the context, in prompt order.
        dropped: passages removed by the critic, with reasons (grows).
        left_out: passages that did not fit the context (max_context).
        critique: the latest critique (kept/dropped/relevance/conflict judgements).
        round: retrieval rounds done (agentic).
        conflict_surfaced: the agent found an unresolved conflict and said so.
        synthesis: the synthesized evidence summary (agentic).
        cited_ids: passage ids cited in the synthesis.
        answer: the read answer (chosen letter, option logits, samples, messages).
        stop_reason: why the graph stopped gathering evidence.
        excluded: passages removed by a what-if replay; evidence steps skip them.
        conflict_injection: the conflict-dose draw added to the evidence or the
            candidates (``dose``, ``ids``, ``pool_size``, ``capped``).
        steps: one StepRecord dict per node execution (grows).
    """

    item_id: str
    query: str
    queries: Annotated[list[str], operator.add]
    candidates: list[EvidenceRef]
    evidence: list[EvidenceRef]
    dropped: Annotated[list[dict], operator.add]
    left_out: list[str]
    critique: dict
    round: int
    conflict_surfaced: bool
    synthesis: str
    cited_ids: list[str]
    answer: dict
    stop_reason: str
    excluded: list[str]
    conflict_injection: dict
    steps: Annotated[list[dict], operator.add]
