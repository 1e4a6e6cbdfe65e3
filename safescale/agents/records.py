"""Versioned records an agent run produces: one StepRecord per node execution and one
ResponseRecord per (model, condition, item, compute budget) — the frozen answer that
metrics and detectors read. Both are written as JSONL by the caller (the runner)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "RECORD_SCHEMA_VERSION",
    "ResponseRecord",
    "RetrievedRef",
    "SampleRecord",
    "StepRecord",
]

RECORD_SCHEMA_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrievedRef(_Record):
    """A passage as a step saw it: id, grade level, status and retrieval score."""

    id: str
    grade_level: int
    grade_raw: str
    status: str
    score: float | None = None
    rank: int | None = None


class StepRecord(_Record):
    """One node execution inside one condition graph for one item."""

    schema_version: int = RECORD_SCHEMA_VERSION
    run: str
    item: str
    condition: str
    model: str
    samples_budget: int = 1
    node: str
    step: int
    inputs_digest: str
    retrieved: list[RetrievedRef] = Field(default_factory=list)
    kept: list[str] = Field(default_factory=list)
    dropped: list[str] = Field(default_factory=list)
    prompt_id: str | None = None
    prompt_hash: str | None = None
    output: str | None = None
    decision: str | None = None
    detail: dict[str, object] = Field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_ms: float = 0.0


class SampleRecord(_Record):
    """One sampled answer (inference-compute axis): the text generated and the option
    it was read as, with the summed raw log-probability of its tokens."""

    text: str
    letter: str | None
    token_ids: list[int] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    temperature: float


class ResponseRecord(_Record):
    """The frozen answer of one model under one condition to one item.

    ``message`` is the exact user turn the final answer was read from (question,
    options and the evidence block); ``message_noctx`` is the same turn with only the
    evidence removed (the NOCTX input of ECRT). ``response`` is the answer text the
    detectors teacher-force. ``option_logits`` are the option scores of the answer
    ``formulation`` (log space, in ``letters`` order; their softmax is the option
    distribution): the raw letter logits for ``letter``, the normalized cloze
    log-probabilities for ``cloze_*`` (see :mod:`safescale.agents.answering`).
    """

    schema_version: int = RECORD_SCHEMA_VERSION
    run: str
    model: str
    condition: str
    item: str
    samples_budget: int = 1
    letters: list[str]
    formulation: str = "letter"
    option_logits: list[float]
    chosen: str
    vote_share: float = 1.0
    response: str
    message: str
    message_noctx: str
    evidence_ids: list[str] = Field(default_factory=list)
    cited_ids: list[str] = Field(default_factory=list)
    samples: list[SampleRecord] = Field(default_factory=list)
    stop_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_ms: float = 0.0
