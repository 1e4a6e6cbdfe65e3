"""Records an agent run produces (re-exported from the run-directory contract,
:mod:`safescale.records`): one StepRecord per node execution and one ResponseRecord
per (model, condition, item, compute budget)."""

from __future__ import annotations

from safescale.records import (
    RECORD_SCHEMA_VERSION,
    ResponseRecord,
    RetrievedRef,
    SampleRecord,
    StepRecord,
)

__all__ = [
    "RECORD_SCHEMA_VERSION",
    "ResponseRecord",
    "RetrievedRef",
    "SampleRecord",
    "StepRecord",
]
