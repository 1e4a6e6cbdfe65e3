"""Agents: the six deployment conditions as LangGraph state machines, the condition
contract and public building blocks for external ones (:mod:`.contract`,
:mod:`.blocks`), step records, failure attribution, trace rendering and what-if replay."""

from __future__ import annotations

from safescale.agents.attribution import CAUSES, Attribution, attribute_failure
from safescale.agents.context import AgentContext, AgentSettings, Critic, Critique
from safescale.agents.contract import ConditionContractError, check_condition
from safescale.agents.lmcache import CachedLM
from safescale.agents.registry import (
    CONDITIONS,
    ConditionError,
    ConditionSpec,
    build_condition,
    condition,
    registered_conditions,
    resolve_condition,
)
from safescale.agents.replay import ReplayError, replay_without
from safescale.agents.run import answer_item, records_from_state, thread_id
from safescale.agents.state import AgentState
from safescale.agents.trace import render_trace
from safescale.rundir import (
    RECORD_SCHEMA_VERSION,
    ResponseRecord,
    RetrievedRef,
    SampleRecord,
    StepRecord,
)

__all__ = [
    "CAUSES",
    "CONDITIONS",
    "RECORD_SCHEMA_VERSION",
    "AgentContext",
    "AgentSettings",
    "AgentState",
    "Attribution",
    "CachedLM",
    "ConditionContractError",
    "ConditionError",
    "ConditionSpec",
    "Critic",
    "Critique",
    "ReplayError",
    "ResponseRecord",
    "RetrievedRef",
    "SampleRecord",
    "StepRecord",
    "answer_item",
    "attribute_failure",
    "build_condition",
    "check_condition",
    "condition",
    "records_from_state",
    "registered_conditions",
    "render_trace",
    "replay_without",
    "resolve_condition",
    "thread_id",
]
