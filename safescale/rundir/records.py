"""The run-directory contract: every record safescale persists, typed and versioned.

One module, imported by the writer (the runner, detection) and by every reader
(report, detect, trace, replay, the viewer). It imports nothing heavier than pydantic:
reading a finished run never loads torch.

Each persisted model carries a ``schema_version``. A stored object of an older version
is upgraded on validation by the model's explicit migrations (``version n -> n + 1``
functions); an object of a newer version than this code knows is refused. The run
directory itself is read through :class:`RunDir` (in :mod:`safescale.rundir.reader`).

Names that become file or directory names (run, model, corpus, detector names) must be
slugs (:data:`SLUG_PATTERN`); so must condition names (:data:`ConditionName`): the six
bundled ones or a researcher's own (see :mod:`safescale.agents.contract`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from safescale.rundir.sections import (
    AttributionRow,
    Cell,
    Comparison,
    ConcentrationRow,
    DistractorRow,
    DoseCurve,
    GradeOverrideRow,
    MetricsSettings,
    RelianceRow,
    RunSection,
    ScalingSection,
    TransitionRow,
    ValidityRow,
    dump_section,
)

__all__ = [
    "ATTRIBUTION_SCHEMA_VERSION",
    "CONDITIONS",
    "DEFAULT_RETRIEVAL_K",
    "MANIFEST_SCHEMA_VERSION",
    "METRICS_SCHEMA_VERSION",
    "RECORD_SCHEMA_VERSION",
    "RELIANCE_SCHEMA_VERSION",
    "REPLAY_SCHEMA_VERSION",
    "RESPONSE_SCHEMA_VERSION",
    "SLUG_PATTERN",
    "STEP_SCHEMA_VERSION",
    "TRIAGE_SCHEMA_VERSION",
    "AttributionRecord",
    "Condition",
    "ConditionName",
    "CorpusEntry",
    "MetricsReport",
    "ModelEntry",
    "PassageMasking",
    "RelianceRecord",
    "ReplayRecord",
    "ResponseKey",
    "ResponseRecord",
    "RetrievedRef",
    "RunManifest",
    "SampleRecord",
    "SchemaVersionError",
    "StepRecord",
    "TriageReportRecord",
    "check_slug",
    "content_key",
    "context_budget_label",
    "record_content_key",
    "sample_dicts",
]

RESPONSE_SCHEMA_VERSION = 4
STEP_SCHEMA_VERSION = 3
ATTRIBUTION_SCHEMA_VERSION = 3
MANIFEST_SCHEMA_VERSION = 3
METRICS_SCHEMA_VERSION = 1
TRIAGE_SCHEMA_VERSION = 2
RELIANCE_SCHEMA_VERSION = 2
#: Kept for older imports: the version of the response records.
RECORD_SCHEMA_VERSION = RESPONSE_SCHEMA_VERSION

#: A name that may become a path component: starts with a letter or digit, then
#: letters, digits, ``.``, ``_`` or ``-`` (so never ``..``, ``/`` or empty).
SLUG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_SLUG = re.compile(SLUG_PATTERN)


def check_slug(value: str, what: str = "name") -> str:
    """Return ``value`` if it is a safe path component, else raise ValueError.

    Args:
        value: the name.
        what: what the name is, for the message (``model name``, ``corpus name``).
    """
    if not isinstance(value, str) or not _SLUG.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} is not a slug (letters, digits, '.', '_', '-'; starting "
            "with a letter or digit, no '..'): it becomes a directory name"
        )
    return value


class Condition(StrEnum):
    """The six bundled SaFE-Scale deployment conditions, in the paper's order (reports
    list them first, in this order, then any other condition of the run)."""

    closed_book = "closed_book"
    clean_evidence = "clean_evidence"
    conflict_evidence = "conflict_evidence"
    standard_rag = "standard_rag"
    agentic_rag = "agentic_rag"
    max_context = "max_context"


#: The bundled condition names in order (plain strings).
CONDITIONS: tuple[str, ...] = tuple(c.value for c in Condition)


def _condition_slug(value: str) -> str:
    return check_slug(value, "condition name")


#: A condition name as records store it: a bundled name or an external condition's
#: name, always a slug (stored as a plain string, as the bundled names always were).
ConditionName = Annotated[str, AfterValidator(_condition_slug)]


class SchemaVersionError(ValueError):
    """A stored object has a schema version this code cannot read."""


Migration = Callable[[dict[str, Any]], dict[str, Any]]


class _Versioned(BaseModel):
    """A persisted model: stored dicts are migrated to :attr:`SCHEMA_VERSION` first.

    ``MIGRATIONS[n]`` turns a version-``n`` dict into a version-``n + 1`` dict. A dict
    without ``schema_version`` is a record being made now, i.e. the current version
    (every version ever written stores its ``schema_version``).
    """

    model_config = ConfigDict(extra="forbid", use_enum_values=True)

    SCHEMA_VERSION: ClassVar[int] = 1
    MIGRATIONS: ClassVar[dict[int, Migration]] = {}

    schema_version: int

    @model_validator(mode="before")
    @classmethod
    def _migrate(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        version = data.get("schema_version", cls.SCHEMA_VERSION)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise SchemaVersionError(f"schema_version must be a positive integer, got {version!r}")
        if version > cls.SCHEMA_VERSION:
            raise SchemaVersionError(
                f"schema_version {version} is newer than this safescale reads "
                f"({cls.__name__} v{cls.SCHEMA_VERSION}); upgrade safescale"
            )
        data = dict(data)
        while version < cls.SCHEMA_VERSION:
            data = cls.MIGRATIONS[version](data)
            version += 1
            data["schema_version"] = version
        data["schema_version"] = version
        return data


# ---------------------------------------------------------------- agent records
class RetrievedRef(BaseModel):
    """A passage as a step saw it: id, grade level, status and retrieval score."""

    model_config = ConfigDict(extra="forbid")

    id: str
    grade_level: int
    grade_raw: str
    status: str
    score: float | None = None
    rank: int | None = None


def _add_conflict_dose(data: dict[str, Any]) -> dict[str, Any]:
    # records made before the conflict-dose axis had no injected passages: dose 0.
    return {**data, "conflict_dose": data.get("conflict_dose", 0)}


#: The retrieval depth of the agents' settings when a config names none (the value a
#: record made before the retrieval-depth axis is read with, unless the run directory's
#: own config says otherwise; see :class:`~safescale.rundir.reader.RunDir`).
DEFAULT_RETRIEVAL_K = 5


def _add_scale_axes(data: dict[str, Any]) -> dict[str, Any]:
    # records made before the context-budget and retrieval-depth axes ran at the run's
    # single configured values; the run-directory reader fills those in from the run's
    # config.yaml before validation, so only a record read on its own gets the
    # defaults (the model's maximum; k = 5).
    return {
        **data,
        "context_budget": data.get("context_budget"),
        "retrieval_k": data.get("retrieval_k", DEFAULT_RETRIEVAL_K),
    }


#: Identity of a response in a run: (model, condition, item, samples_budget,
#: conflict_dose, context_budget, retrieval_k).
ResponseKey = tuple[str, str, str, int, int, int | None, int]


def _key(record: Any) -> ResponseKey:
    return (
        record.model,
        str(record.condition),
        record.item,
        int(record.samples_budget),
        int(record.conflict_dose),
        None if record.context_budget is None else int(record.context_budget),
        int(record.retrieval_k),
    )


def context_budget_label(budget: int | None) -> str:
    """A context budget as reports show it: the token count, or ``max`` (the model's
    maximum)."""
    return "max" if budget is None else str(int(budget))


class StepRecord(_Versioned):
    """One node execution inside one condition graph for one item (``steps.jsonl``).

    Versions: 1 had no ``conflict_dose``; 2 adds it (0 before the dose axis); 3 adds
    ``context_budget`` and ``retrieval_k`` (see :class:`ResponseRecord`).
    """

    SCHEMA_VERSION: ClassVar[int] = STEP_SCHEMA_VERSION
    MIGRATIONS: ClassVar[dict[int, Migration]] = {1: _add_conflict_dose, 2: _add_scale_axes}

    schema_version: int = STEP_SCHEMA_VERSION
    run: str
    item: str
    condition: ConditionName
    model: str
    samples_budget: int = 1
    conflict_dose: int = 0
    context_budget: int | None = None
    retrieval_k: int = DEFAULT_RETRIEVAL_K
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

    @property
    def key(self) -> ResponseKey:
        """Identity of the response this step belongs to."""
        return _key(self)


class SampleRecord(BaseModel):
    """One sampled answer (inference-compute axis): the text generated and the option
    it was read as, with the summed raw log-probability of its tokens."""

    model_config = ConfigDict(extra="forbid")

    text: str
    letter: str | None
    token_ids: list[int] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    temperature: float


def _response_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 answers were always read from the option letters' logits.
    return {**data, "formulation": "letter"}


class ResponseRecord(_Versioned):
    """The frozen answer of one model under one condition to one item
    (``responses.jsonl``; the response line is the item's commit mark).

    ``message`` is the exact user turn the final answer was read from (question,
    options and the evidence block); ``message_noctx`` is the same turn with only the
    evidence removed (the NOCTX input of ECRT). ``response`` is the answer text the
    detectors teacher-force. ``formulation`` names how the option scores were read
    (``letter``, ``letter_debiased``, ``cloze``, ``cloze_token``, ``cloze_char``,
    ``cloze_pmi``, ...); ``option_logits`` are that formulation's log-space option
    scores in ``letters`` order (their softmax is the option distribution).

    ``conflict_dose`` is the number of contradicting passages the sweep asked to add to
    the item's evidence (or retrieval candidates); ``conflict_injected`` are the ones
    drawn for it (added unless already there; fewer than the dose when the item's
    conflicting pool is smaller: ``dose_capped``).

    ``context_budget`` is the cell's prompt token budget (None: the model's maximum;
    max-context packs passages up to it) and ``retrieval_k`` its retrieval depth (the
    RAG conditions' top-k). A condition a swept axis does not apply to runs at the
    axis's base value (see :class:`~safescale.experiments.config.AxisConditions`).

    Versions: 1 had no ``formulation`` (always the letter logits); 2 adds it; 3 adds
    ``conflict_dose``, ``conflict_injected`` and ``dose_capped`` (0, none, False before);
    4 adds ``context_budget`` and ``retrieval_k`` (before: the run's single configured
    values, filled in by the run-directory reader from the run's ``config.yaml``).
    """

    SCHEMA_VERSION: ClassVar[int] = RESPONSE_SCHEMA_VERSION
    MIGRATIONS: ClassVar[dict[int, Migration]] = {
        1: _response_v1_to_v2,
        2: _add_conflict_dose,
        3: _add_scale_axes,
    }

    schema_version: int = RESPONSE_SCHEMA_VERSION
    run: str
    model: str
    condition: ConditionName
    item: str
    samples_budget: int = 1
    conflict_dose: int = 0
    context_budget: int | None = None
    retrieval_k: int = DEFAULT_RETRIEVAL_K
    conflict_injected: list[str] = Field(default_factory=list)
    dose_capped: bool = False
    formulation: str = "letter"
    letters: list[str]
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

    @property
    def key(self) -> ResponseKey:
        """Identity in a run: (model, condition, item, samples_budget, conflict_dose,
        context_budget, retrieval_k)."""
        return _key(self)


def content_key(
    *, message: str, message_noctx: str, response: str, chosen: str, samples: Sequence[dict]
) -> str:
    """The content digest of a response from its fields (:func:`record_content_key`
    before the record exists): what detection keys a response's features and inputs by
    (the ``record_key`` column of ``detection/*/features.parquet``)."""
    payload = {
        "message": message,
        "message_noctx": message_noctx,
        "response": response,
        "chosen": chosen,
        "samples": [
            [list(s["token_ids"]), list(s["token_logprobs"]), s["letter"]] for s in samples
        ],
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def record_content_key(record: ResponseRecord) -> str:
    """The content digest of a response record (what its detection features depend on
    besides the model)."""
    return content_key(
        message=record.message,
        message_noctx=record.message_noctx,
        response=record.response,
        chosen=record.chosen,
        samples=sample_dicts(record),
    )


def sample_dicts(record: ResponseRecord) -> list[dict]:
    """A response's sampled answers as the plain dicts the detection inputs are keyed
    and computed from (token ids, their log-probs, the letter each one chose)."""
    return [
        {"token_ids": s.token_ids, "token_logprobs": s.token_logprobs, "letter": s.letter}
        for s in record.samples
    ]


class AttributionRecord(_Versioned):
    """The attributed cause of one high-risk or unsafe answer (``attribution.jsonl``).

    Versions: 1 had no ``conflict_dose``; 2 adds it (0 before the dose axis); 3 adds
    ``context_budget`` and ``retrieval_k`` (see :class:`ResponseRecord`).
    """

    SCHEMA_VERSION: ClassVar[int] = ATTRIBUTION_SCHEMA_VERSION
    MIGRATIONS: ClassVar[dict[int, Migration]] = {1: _add_conflict_dose, 2: _add_scale_axes}

    schema_version: int = ATTRIBUTION_SCHEMA_VERSION
    model: str
    condition: ConditionName
    item: str
    samples_budget: int = 1
    conflict_dose: int = 0
    context_budget: int | None = None
    retrieval_k: int = DEFAULT_RETRIEVAL_K
    severity: str  # "high_risk" | "unsafe"
    cause: str
    step: int | None = None
    node: str | None = None
    explanation: str

    @property
    def key(self) -> ResponseKey:
        """Identity of the attributed response."""
        return _key(self)


# ---------------------------------------------------------------- causal reliance
class PassageMasking(BaseModel):
    """One masked span of a response's prompt and what masking it did to the answer.

    Attributes:
        passage: the passage id (None for the whole evidence block).
        grade_level, grade_raw, status: the passage's grade and status.
        stance_chosen, stance_gold: its labelled stance toward the chosen option and
            the gold (``neutral`` when unlabelled).
        cited: it is one of the response's cited passages (see
            :attr:`RelianceRecord.cited_rule`).
        weaker: it is superseded/withdrawn or of a weaker grade level than the
            strongest passage of the prompt.
        span: its token span ``[start, end)`` in the prompt (None: not found, not masked).
        kl: ``KL(p_before || p_after)`` of the option distribution (None: not masked).
        flipped: the most probable option changed.
        chosen_after: the most probable option with the span masked.
    """

    model_config = ConfigDict(extra="forbid")

    passage: str | None = None
    grade_level: int | None = None
    grade_raw: str | None = None
    status: str | None = None
    stance_chosen: str | None = None
    stance_gold: str | None = None
    cited: bool = False
    weaker: bool = False
    span: tuple[int, int] | None = None
    kl: float | None = None
    flipped: bool | None = None
    chosen_after: str | None = None


class RelianceRecord(_Versioned):
    """Causal reliance of one frozen response on its evidence (``reliance.jsonl``):
    the answer re-read under its formulation with each passage, and all evidence
    together, blocked from attention (see :mod:`safescale.experiments.reliance`).

    Attributes:
        status: ``ok`` (measured), ``mismatch`` (the unmasked re-read did not reproduce
            the recorded ``option_logits`` within ``tolerance``: not masked, excluded
            from the shares) or ``skipped`` (``reason`` says why).
        max_abs_diff: largest difference between the unmasked re-read and the recorded
            option scores.
        chosen_before: the most probable option of the unmasked re-read.
        evidence: the whole evidence block masked.
        passages: each prompt passage masked on its own, in prompt order.
        cited_rule: how ``cited`` was decided: ``response_citations`` (the response's
            own ``cited_ids`` among its prompt passages), ``supporting_stance`` (no
            citations: the prompt passages whose stance supports the chosen option, of
            the strongest grade level among them) or ``none`` (neither exists).

    Versions: 2 adds ``context_budget`` and ``retrieval_k`` (see :class:`ResponseRecord`).
    """

    SCHEMA_VERSION: ClassVar[int] = RELIANCE_SCHEMA_VERSION
    MIGRATIONS: ClassVar[dict[int, Migration]] = {1: _add_scale_axes}

    schema_version: int = RELIANCE_SCHEMA_VERSION
    run: str
    model: str
    condition: ConditionName
    item: str
    samples_budget: int = 1
    conflict_dose: int = 0
    context_budget: int | None = None
    retrieval_k: int = DEFAULT_RETRIEVAL_K
    formulation: str
    mode: str
    status: str
    reason: str | None = None
    tolerance: float
    max_abs_diff: float | None = None
    letters: list[str] = Field(default_factory=list)
    gold: str | None = None
    chosen: str
    chosen_before: str | None = None
    evidence: PassageMasking | None = None
    passages: list[PassageMasking] = Field(default_factory=list)
    cited_ids: list[str] = Field(default_factory=list)
    cited_rule: str = "none"
    wall_ms: float = 0.0

    @property
    def key(self) -> ResponseKey:
        """Identity of the measured response."""
        return _key(self)


# ---------------------------------------------------------------- the manifest
class ModelEntry(BaseModel):
    """A model of the run as loaded: what was loaded and the weights' hash.

    Attributes:
        spec: what was loaded (a served model: its name at the endpoint).
        hash: the weights' hash (a served model: its identity digest, see
            :mod:`safescale.models.served.base`).
        context_length: the context window in tokens.
        layers: the number of layers (None for a served model).
        served: a served model's settings (no API key), identity, what the capability
            probe found, the formulations it can serve and its request counters.
        whitebox: the local spec of the same weights for white-box detection.
        parameters: the parameter count (the model-size axis of the scaling analysis;
            None when the run predates it or the backend cannot count them).
    """

    model_config = ConfigDict(extra="forbid")

    spec: str
    hash: str
    context_length: int | None = None
    layers: int | None = None
    served: dict[str, Any] | None = None
    whitebox: str | None = None
    parameters: int | None = None


class CorpusEntry(BaseModel):
    """A corpus of the run: the config reference, its directory and content hash."""

    model_config = ConfigDict(extra="forbid")

    ref: str
    path: str | None = None
    content_hash: str


def _manifest_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "formulations": data.get("formulations", {})}


def _manifest_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    # v3 model entries may carry ``parameters`` (older ones did not count them) and a
    # run records how max-context packs its corpora
    return {**data, "max_context": data.get("max_context", {})}


class RunManifest(_Versioned):
    """``manifest.json``: what a run was made with.

    Attributes:
        name: run name (the config's).
        config_hash: hash of the resolved config (a run directory belongs to one).
        created: ISO time the run directory was created.
        packages: versions of the packages that matter.
        git_revision: safescale's git revision when known.
        seed: the run seed.
        models: model name -> what was loaded (recorded when the model loads).
        corpora: corpus name -> reference and content hash.
        formulations: model -> corpus -> answer-formulation choice
            (``{"chosen": str, "candidates": {...}, "calibration_items": [...]}``).
        max_context: model -> corpus -> how max-context packs it (``{"order":
            "similarity" | "corpus", "rule": str, "limit": int, ...}``; with ``corpus``
            also the shared block's ``kept`` ids and ``left_out`` id -> reason).

    Versions: 1 had no ``formulations``; 2 adds it; 3 adds each model's ``parameters``
    (None in older manifests) and ``max_context``.
    """

    SCHEMA_VERSION: ClassVar[int] = MANIFEST_SCHEMA_VERSION
    MIGRATIONS: ClassVar[dict[int, Migration]] = {1: _manifest_v1_to_v2, 2: _manifest_v2_to_v3}

    schema_version: int = MANIFEST_SCHEMA_VERSION
    name: str
    config_hash: str
    created: str
    packages: dict[str, str] = Field(default_factory=dict)
    git_revision: str | None = None
    seed: int = 0
    models: dict[str, ModelEntry] = Field(default_factory=dict)
    corpora: dict[str, CorpusEntry] = Field(default_factory=dict)
    formulations: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    max_context: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_slug(cls, value: str) -> str:
        return check_slug(value, "run name")

    @field_validator("models", "corpora")
    @classmethod
    def _keys_slug(cls, value: dict[str, Any], info: Any) -> dict[str, Any]:
        what = "model name" if info.field_name == "models" else "corpus name"
        for key in value:
            check_slug(key, what)
        return value


# ---------------------------------------------------------------- derived reports
class TriageReportRecord(_Versioned):
    """One backbone x corpus triage report as stored in ``detection/triage.json`` (a
    list of these). The detection layer's ``TriageReport`` writes this shape; the rows
    stay plain dicts here so that reading them needs no detection import."""

    SCHEMA_VERSION: ClassVar[int] = TRIAGE_SCHEMA_VERSION
    #: v1 -> v2: the evaluation protocol and its counts (a v1 report was one seeded
    #: split, scored on its test split, without intervals).
    MIGRATIONS: ClassVar[dict[int, Migration]] = {
        1: lambda d: {
            **d,
            "protocol": "split",
            "scored_counts": (d.get("class_counts") or {}).get("test", {}),
        }
    }

    schema_version: int = TRIAGE_SCHEMA_VERSION
    backbone: str
    model_hash: str
    corpus: str | None = None
    label_source: str
    target_recall: float
    seed: int
    n_records: int
    split_sizes: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    rows: list[dict[str, Any]]
    calibration: dict[str, Any] | None = None
    protocol: str = "split"
    folds: int | None = None
    repeats: int = 1
    replicates: int = 0
    n_groups: int = 0
    scored_counts: dict[str, int] = Field(default_factory=dict)
    verdicts: list[str] = Field(default_factory=list)
    power: dict[str, Any] | None = None
    transfer: list[dict[str, Any]] = Field(default_factory=list)


class MetricsReport(_Versioned):
    """``metrics.json``: per-cell metrics with bootstrap CIs, comparisons (with their
    power), attribution counts, triage results, validity checks, grade override,
    per-item transitions, conflict dose-response, attention masking, the safety-label
    provenance per corpus and the scaling analysis.

    Every section is typed (:mod:`safescale.rundir.sections`); a file without the later
    sections reads as empty ones (e.g. ``distractors``: clean evidence -> retrieval with
    the gold passages present). :meth:`to_json` gives back the stored structure.
    """

    SCHEMA_VERSION: ClassVar[int] = METRICS_SCHEMA_VERSION

    schema_version: int = METRICS_SCHEMA_VERSION
    run: RunSection
    settings: MetricsSettings = Field(default_factory=MetricsSettings)
    definitions: dict[str, Any] = Field(default_factory=dict)
    validity: list[ValidityRow] = Field(default_factory=list)
    cells: list[Cell] = Field(default_factory=list)
    comparisons: list[Comparison] = Field(default_factory=list)
    concentration: list[ConcentrationRow] | None = None
    attribution: list[AttributionRow] = Field(default_factory=list)
    grade_override: list[GradeOverrideRow] = Field(default_factory=list)
    transitions: list[TransitionRow] = Field(default_factory=list)
    distractors: list[DistractorRow] = Field(default_factory=list)
    dose_response: list[DoseCurve] = Field(default_factory=list)
    reliance: list[RelianceRow] = Field(default_factory=list)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    triage: list[TriageReportRecord] | None = None
    labels: dict[str, dict[str, Any]] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def coerce(cls, metrics: MetricsReport | Mapping[str, Any]) -> MetricsReport:
        """``metrics`` itself when already a report, else the stored structure (a
        ``metrics.json`` as read, or as a producer returns it) validated."""
        return metrics if isinstance(metrics, cls) else cls.model_validate(metrics)

    def to_json(self) -> dict[str, Any]:
        """The report as ``metrics.json`` stores it: the keys it was read or made with,
        in the producers' order (see :func:`~safescale.rundir.sections.dump_section`)."""
        return dump_section(self)


# ---------------------------------------------------------------- what-if replays
REPLAY_SCHEMA_VERSION = 1


class ReplayRecord(_Versioned):
    """One what-if replay of a response (``replays.jsonl``): the item re-run from after
    its evidence step without some passages (``safescale replay``).

    Attributes:
        created: ISO time of the replay.
        dropped: the passages removed.
        fork_step: the step index the replay forked after.
        original_chosen: the option the original response chose.
        response: the replayed response (same model, condition, item and budget).
        steps: the replayed steps (the original steps up to the fork, then the new ones).
    """

    SCHEMA_VERSION: ClassVar[int] = REPLAY_SCHEMA_VERSION

    schema_version: int = REPLAY_SCHEMA_VERSION
    created: str
    dropped: list[str]
    fork_step: int
    original_chosen: str
    response: ResponseRecord
    steps: list[StepRecord] = Field(default_factory=list)

    @property
    def key(self) -> ResponseKey:
        """Identity of the replayed response."""
        return self.response.key
