"""Experiment configuration: one YAML file -> a frozen, validated :class:`ExperimentConfig`.

Every section rejects unknown keys; :func:`load_config` reports a typo (or any other
invalid value) as a :class:`ConfigError` naming the key, the file and the line::

    safescale/experiments/configs/demo.yaml:7: retreival: unknown key (did you mean 'retrieval'?)

A run covers the cross product ``models × corpora × conditions × compute.samples ×
conflict_dose × context_budget × retrieval.k`` (:meth:`ExperimentConfig.grid`), where
each scale axis applies only to the conditions that read it (``axis_conditions``,
:class:`AxisConditions`): the others run once, at the axis's base value (closed-book has
no evidence, so it runs at dose 0 only; only max-context reads the context budget; only
the RAG conditions read ``k``). Bundled configs live in ``experiments/configs/`` and
are found by name (:func:`list_bundled_configs`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from safescale.agents.answering import FORMULATIONS
from safescale.agents.context import AgentSettings
from safescale.corpora.schema import Task
from safescale.detection.pipeline import DetectionConfig
from safescale.rundir import SLUG_PATTERN, check_slug
from safescale.statistics.bootstrap import BootstrapConfig
from safescale.statistics.metrics import CONDITIONS, LEGACY_DEFAULT_COMPARISONS, MetricsConfig

__all__ = [
    "CONDITIONS",
    "CONFIGS_DIR",
    "MAX_CONFLICT_DOSE",
    "SCALE_AXES",
    "AgenticConfig",
    "AnswerConfig",
    "AxisConditions",
    "ComputeConfig",
    "ConfigError",
    "DetectionSettings",
    "ExperimentConfig",
    "GridCell",
    "ItemFilter",
    "MaxContextConfig",
    "MlflowTracking",
    "ModelConfig",
    "RelianceSettings",
    "RetrievalConfig",
    "TrackingConfig",
    "config_hash",
    "list_bundled_configs",
    "load_config",
    "parse_config",
    "resolve_config_path",
    "unwrap_annotation",
]

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def _condition_source(source: str, info: ValidationInfo) -> str:
    """Resolve, build and contract-check one ``conditions`` entry (no model call)."""
    from safescale.agents.registry import ConditionError, resolve_condition

    try:
        resolve_condition(source, info.data.get("import_path") or ())
    except ConditionError as error:
        raise ValueError(str(error)) from None
    return source


#: The largest conflict dose: contradicting passages added to one item's evidence (a
#: larger dose than an item's conflicting pool is capped to the pool anyway).
MAX_CONFLICT_DOSE = 1000


#: One ``conditions`` entry: a bundled name, a ``module:function`` import path or an
#: entry-point name (group ``safescale.conditions``); see
#: :mod:`safescale.agents.contract`.
ConditionSource = Annotated[str, AfterValidator(_condition_source)]


class ConfigError(ValueError):
    """An experiment config that cannot be found, parsed or validated.

    Attributes:
        problems: one ``file:line: key: message`` string per problem.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _agent_default(name: str) -> Any:
    """The agents' own default of a knob (one default per knob)."""
    return AgentSettings.model_fields[name].default


_DEVICE = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The fields of a served model entry (``kind`` other than ``local``).
SERVED_FIELDS = (
    "base_url",
    "model",
    "api_key_env",
    "max_concurrency",
    "timeout_s",
    "retries",
    "tokenizer",
    "whitebox",
    "top_logprobs",
    "context_length",
    "extra_body",
    "engine_args",
)
#: Fields that say how to reach and pace a server, not what is computed: not part of
#: the config hash (a run resumes against a restarted server at another address).
CONNECTION_FIELDS = ("base_url", "api_key_env", "max_concurrency", "timeout_s", "retries")


class ModelConfig(_Section):
    """One model of the sweep. A bare string in the YAML is shorthand for ``{name: ...}``.

    Attributes:
        name: the name results are recorded under.
        kind: ``local`` (weights loaded here with transformers), ``openai`` (an
            OpenAI-compatible ``/v1/completions`` server), ``openai-chat`` (a chat-only
            endpoint: letter formulations only) or ``vllm`` (vLLM in the worker
            process). See ``docs/served-models.md``.
        spec: what :func:`safescale.models.load_model` loads (registered name, path or
            HF id); defaults to ``name``. For ``kind: vllm``, what vLLM loads.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        dtype: weights dtype.
        batch_size: prompts per forward pass when scoring options (and, with
            ``items_in_flight > 1``, rows per merged forward).
        items_in_flight: items of a shard answered at once; their cloze and letter
            scoring calls are merged into padded batches of up to ``batch_size`` prompts
            (:mod:`safescale.models.microbatch`). 1 answers one item at a time. It
            changes how calls are batched, not what is answered, so it is not part of
            the config hash (a run can be resumed with another value). A served model
            answers at least ``max_concurrency`` items at once.
        prefix_cache_mb: bound (MiB) of the model's cross-item prefix cache: the KV
            states of prompt prefixes shared across items and calls are computed once
            (:mod:`safescale.models.prefix_cache`; ``docs/prefix-cache.md``). ``0``
            turns it off. The default holds SmolLM2-135M's whole 8,192-token window
            in float32 (46 KB a token) plus the tails of the prompts around it. The
            same answers either way (to float tolerance), so it is not part of the
            config hash either.
        base_url: the API root of a served model (``http://127.0.0.1:8000/v1``).
        model: the served model's name at the endpoint (default: ``spec`` or ``name``).
        api_key_env: environment variable holding the API key (never written to the
            run directory).
        max_concurrency: requests a served model keeps in flight.
        timeout_s: seconds per request.
        retries: retries of a request that timed out, could not connect or got 429 /
            5xx (with exponential backoff).
        tokenizer: the served model's tokenizer, loaded locally (registered name,
            directory, ``.gguf`` or HF id): the prompt format and token counts; required
            for ``kind: openai`` unless ``whitebox`` names the same weights.
        whitebox: the same weights loaded locally (a local model spec) for the
            white-box detectors (ECRT, probes, lens, attention); without it those
            detectors are unavailable for this model.
        top_logprobs: alternatives asked per position (letters are read among them).
        context_length: the served context window (default: what the server reports,
            else 2048).
        extra_body: extra JSON fields sent with every request.
        engine_args: extra ``vllm.LLM`` arguments (``kind: vllm``).

    ``base_url``, ``api_key_env``, ``max_concurrency``, ``timeout_s`` and ``retries``
    say how to reach the server, not what is computed: they are not part of the
    config hash.
    """

    name: str = Field(min_length=1)
    kind: Literal["local", "openai", "openai-chat", "vllm"] = "local"
    spec: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = Field(8, ge=1)
    items_in_flight: int = Field(1, ge=1)
    base_url: str | None = None
    model: str | None = Field(None, min_length=1)
    api_key_env: str | None = None
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(3, ge=0)
    tokenizer: str | None = Field(None, min_length=1)
    whitebox: str | None = Field(None, min_length=1)
    top_logprobs: int = Field(20, ge=1, le=100_000)
    context_length: int | None = Field(None, ge=64)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    engine_args: dict[str, Any] = Field(default_factory=dict)
    prefix_cache_mb: float = Field(512, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @field_validator("name")
    @classmethod
    def _slug(cls, name: str) -> str:
        return check_slug(name, "model name")

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not _DEVICE.fullmatch(device):
            raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto")
        return device

    @field_validator("base_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"not an http(s) URL: {url!r} (e.g. http://127.0.0.1:8000/v1)")
        return None if url is None else url.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env(cls, name: str | None) -> str | None:
        if name is not None and not _ENV_NAME.fullmatch(name):
            raise ValueError(
                f"{name!r} is not an environment variable name (give the variable's name, "
                "never the key itself)"
            )
        return name

    @model_validator(mode="after")
    def _kind_fields(self) -> ModelConfig:
        fields = type(self).model_fields
        given = [
            f
            for f in SERVED_FIELDS
            if getattr(self, f) != fields[f].get_default(call_default_factory=True)
        ]
        if self.kind == "local":
            if given:
                raise ValueError(
                    f"{', '.join(given)}: only for a served model (kind: openai, openai-chat "
                    "or vllm); this entry is kind: local"
                )
            return self
        if self.kind in ("openai", "openai-chat"):
            if self.base_url is None:
                raise ValueError(f"kind: {self.kind} needs base_url (the API root, .../v1)")
            if self.kind == "openai" and self.tokenizer is None and self.whitebox is None:
                raise ValueError(
                    "kind: openai needs tokenizer: (the served model's tokenizer, loaded "
                    "locally: registered name, directory, .gguf or HF id) to format prompts "
                    "and find continuation tokens"
                )
            if self.engine_args:
                raise ValueError(f"engine_args: only for kind: vllm, not kind: {self.kind}")
        elif self.base_url is not None or self.api_key_env is not None:
            raise ValueError("kind: vllm runs in this process: no base_url / api_key_env")
        return self

    @property
    def source(self) -> str:
        """The spec to load (``spec`` or, if unset, ``name``)."""
        return self.spec or self.name

    @property
    def served(self) -> bool:
        """Whether this is a served model (not local weights)."""
        return self.kind != "local"

    def served_settings(self):
        """The :class:`~safescale.models.served.ServedSettings` of a served entry."""
        from safescale.models.served import ServedSettings

        return ServedSettings(
            kind=self.kind,  # type: ignore[arg-type]
            name=self.name,
            model=self.model or self.source,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            max_concurrency=self.max_concurrency,
            timeout_s=self.timeout_s,
            retries=self.retries,
            tokenizer=self.tokenizer or self.whitebox,
            top_logprobs=self.top_logprobs,
            context_length=self.context_length,
            extra_body=dict(self.extra_body),
            dtype="auto" if self.dtype == "float32" and self.kind == "vllm" else self.dtype,
            engine_args=dict(self.engine_args),
        )


def _axis_list(value: Any, what: str) -> Any:
    """A scalar as a one-value list; a list as a tuple in the order given."""
    if value is None or isinstance(value, int | str):
        value = [value]
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(f"at least one {what} is needed")
        return tuple(value)
    return value


def _unique(values: tuple[Any, ...], what: str) -> tuple[Any, ...]:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} repeat: {list(values)}")
    return values


class RetrievalConfig(_Section):
    """Retrieval settings of the RAG conditions.

    Attributes:
        k: passages retrieved per query; a list sweeps the retrieval depth (a scalar is
            a one-value list). The first value is the base the conditions outside the
            axis run at (see :class:`AxisConditions`).
        index_type: FAISS index kind (``ivfpq_disk``: on-disk inverted lists and
            memory-mapped vectors, for corpora whose embeddings do not fit in memory).

    Agentic RAG always reranks by grade and status; standard RAG never does (that is
    the difference the conditions measure), so there is no rerank switch.
    """

    k: tuple[Annotated[int, Field(ge=1)], ...] = (_agent_default("k"),)
    index_type: Literal["flat", "ivf", "hnsw", "ivfpq_disk"] = "flat"

    @field_validator("k", mode="before")
    @classmethod
    def _k_list(cls, k: Any) -> Any:
        if isinstance(k, bool):
            raise ValueError("k must be an integer >= 1")
        return _axis_list(k, "retrieval depth")

    @field_validator("k")
    @classmethod
    def _k_unique(cls, k: tuple[int, ...]) -> tuple[int, ...]:
        return _unique(k, "retrieval depths")


class AgenticConfig(_Section):
    """Settings of the agentic RAG condition.

    Attributes:
        max_steps: upper bound on retrieve/critique iterations per item.
    """

    max_steps: int = Field(_agent_default("max_steps"), ge=1)


class ComputeConfig(_Section):
    """Inference-compute axis.

    Attributes:
        samples: compute budgets to run; 1 = greedy answer, n > 1 = majority vote over
            n samples (each budget is a separate set of responses).
        temperature: sampling temperature for budgets > 1 (and detection samples).
        detection_samples: sampled answers recorded with each greedy (budget 1)
            response for the sampling-based detectors (LN-entropy, EigenScore,
            SelfCheck); they do not change the answer. 0 records none.
    """

    samples: tuple[int, ...] = (1,)
    temperature: float = Field(_agent_default("temperature"), gt=0.0)
    detection_samples: int = Field(_agent_default("extra_samples"), ge=0)

    @field_validator("samples")
    @classmethod
    def _positive_unique(cls, samples: tuple[int, ...]) -> tuple[int, ...]:
        if not samples:
            raise ValueError("at least one compute budget is needed")
        if any(s < 1 for s in samples):
            raise ValueError(f"compute budgets must be >= 1, got {list(samples)}")
        if len(set(samples)) != len(samples):
            raise ValueError(f"compute budgets repeat: {list(samples)}")
        return tuple(sorted(samples))


class AnswerConfig(_Section):
    """How answers are read (see :mod:`safescale.agents.answering` and
    :mod:`safescale.experiments.answer_calibration`).

    Attributes:
        formulation: ``auto`` (chosen per model x corpus on held-out calibration items)
            or a fixed formulation: ``letter``, ``letter_cyclic``, ``letter_pride``,
            ``cloze_none``, ``cloze_token``, ``cloze_char``, ``cloze_pmi``.
        calibration_items: items held out per corpus for ``auto`` / ``letter_pride``
            (whole evidence groups; at most half of the corpus).
        tie_margin: ``auto`` treats candidates within this calibration accuracy of the
            best as tied and prefers the most evidence-sensitive among them.
    """

    formulation: Literal["auto", *FORMULATIONS] = "auto"  # type: ignore[valid-type]
    calibration_items: int = Field(16, ge=2)
    tie_margin: float = Field(0.05, ge=0.0, le=1.0)


class DetectionSettings(DetectionConfig):
    """The detection layer's :class:`~safescale.detection.DetectionConfig` plus ``enabled``.

    Attributes:
        enabled: run detection after the responses are complete.
    """

    enabled: bool = False

    def detection_config(self) -> DetectionConfig:
        """The settings as the detection layer's own config (without ``enabled``)."""
        return DetectionConfig.model_validate(self.model_dump(exclude={"enabled"}))


class RelianceSettings(_Section):
    """The causal-reliance stage (:mod:`safescale.experiments.reliance`): each frozen
    evidence response re-read with each prompt passage, and all evidence, blocked from
    attention.

    Attributes:
        enabled: run the stage after the responses are complete.
        mode: ``all_later`` (every later query is blocked: deleting the span without
            a RoPE shift) or ``answer`` (only the answer position and continuations).
        conditions: the conditions to measure (None: every response with evidence).
        tolerance: largest difference between the unmasked re-read and the recorded
            option scores for a response to be measured.
    """

    enabled: bool = False
    mode: Literal["all_later", "answer"] = "all_later"
    conditions: tuple[str, ...] | None = None
    tolerance: float = Field(1e-3, gt=0.0)


class MaxContextConfig(_Section):
    """How the max-context condition fills its budget
    (:func:`safescale.agents.nodes.pack_context_node`).

    Attributes:
        order: ``similarity``: each item's own ranking of the corpus by similarity to
            its question, whole passages while they fit; ``corpus``: every passage in
            one fixed corpus order (topic, then grade level, then date), the same
            evidence block for every item, and when the corpus does not fit the same
            passages left out for every item (withdrawn, then superseded, then the
            weakest grade, then the oldest). With ``corpus`` only the question differs
            between items' prompts, so the prefix cache prefills the block once.
            The default stays ``similarity`` until the measurement of both orders on
            the bundled study decides it (``docs/prefix-cache.md``).
    """

    order: Literal["similarity", "corpus"] = _agent_default("max_context_order")


class ItemFilter(_Section):
    """Which items of each corpus to run (applied before ``limit``).

    Attributes:
        categories: keep items of these categories (None: all).
        tasks: keep items of these tasks (None: all; items without a task are dropped
            when set).
        ids: keep only these item ids (None: all).
    """

    categories: tuple[str, ...] | None = None
    tasks: tuple[Task, ...] | None = None
    ids: tuple[str, ...] | None = None


class MlflowTracking(_Section):
    """Where a run is logged in MLflow (``tracking: {mlflow: {...}}``).

    Attributes:
        uri: the tracking URI (``file:./mlruns``, ``sqlite:///mlflow.db``, a server).
        experiment: the MLflow experiment (default: the run's name).
    """

    uri: str = Field(min_length=1)
    experiment: str | None = Field(None, min_length=1)


class TrackingConfig(_Section):
    """Experiment trackers a finished run is logged to (config, metrics with their CI
    bounds, plots and the report; see :mod:`safescale.experiments.tracking`). Where a
    run is logged does not change what it computes, so it is not part of the config
    hash.

    Attributes:
        mlflow: log to MLflow.
    """

    mlflow: MlflowTracking | None = None


#: The scale axes of a config besides the model: ``axis_conditions`` key -> what the
#: records call the value.
SCALE_AXES = {
    "compute_samples": "samples_budget",
    "conflict_dose": "conflict_dose",
    "context_budget": "context_budget",
    "retrieval_k": "retrieval_k",
}

#: Bundled conditions that do not read an axis (they would give the same answers at
#: every value), with the reason an error gives.
_AXIS_UNUSED = {
    "conflict_dose": {"closed_book": "closed-book has no evidence to add passages to"},
    "context_budget": {
        c: "only max-context packs passages up to the context budget"
        for c in (
            "closed_book",
            "clean_evidence",
            "conflict_evidence",
            "standard_rag",
            "agentic_rag",
        )
    },
    "retrieval_k": {
        c: "only the RAG conditions retrieve top-k passages"
        for c in ("closed_book", "clean_evidence", "conflict_evidence", "max_context")
    },
}


class AxisConditions(_Section):
    """Which conditions each scale axis applies to (``axis_conditions:`` in the YAML).

    A condition an axis applies to runs at every value of the axis; any other runs
    once, at the axis's *base* value: the smallest compute budget, dose 0 (a condition
    outside the dose axis is not run when 0 is not among the doses), the first listed
    context budget and the first listed retrieval depth. None (the default) applies an
    axis to every condition that reads it: compute budgets to all, conflict doses to
    all but closed-book, the context budget to max-context and the retrieval depth to
    standard and agentic RAG, and both to every condition of your own (safescale cannot
    tell whether it reads them). A bundled condition that does not read an axis cannot
    be named for it.

    Attributes:
        compute_samples: conditions run at every ``compute.samples`` budget.
        conflict_dose: conditions run at every ``conflict_dose``.
        context_budget: conditions run at every ``context_budget``.
        retrieval_k: conditions run at every ``retrieval.k``.
    """

    compute_samples: tuple[str, ...] | None = None
    conflict_dose: tuple[str, ...] | None = None
    context_budget: tuple[str, ...] | None = None
    retrieval_k: tuple[str, ...] | None = None

    @field_validator("*")
    @classmethod
    def _names(cls, names: tuple[str, ...] | None, info: ValidationInfo) -> Any:
        if names is None:
            return None
        for name in names:
            check_slug(name, "condition name")
            reason = _AXIS_UNUSED.get(str(info.field_name), {}).get(name)
            if reason is not None:
                raise ValueError(f"{name} does not read this axis ({reason})")
        return _unique(tuple(names), "conditions")

    def named(self, axis: str) -> tuple[str, ...] | None:
        """The conditions the config names for an axis (None: not set)."""
        return {
            "compute_samples": self.compute_samples,
            "conflict_dose": self.conflict_dose,
            "context_budget": self.context_budget,
            "retrieval_k": self.retrieval_k,
        }[axis]


def default_axis_conditions(axis: str, conditions: Sequence[str]) -> tuple[str, ...]:
    """The conditions an axis applies to when ``axis_conditions`` does not say."""
    unused = _AXIS_UNUSED.get(axis, {})
    return tuple(c for c in conditions if c not in unused)


class GridCell(NamedTuple):
    """One (model, corpus, condition, compute budget, conflict dose, context budget,
    retrieval depth) combination of a sweep (``condition`` is the recorded name; see
    :meth:`ExperimentConfig.condition_source`; ``context_budget`` None is the model's
    maximum)."""

    model: ModelConfig
    corpus: str
    condition: str
    samples_budget: int
    conflict_dose: int = 0
    context_budget: int | None = None
    retrieval_k: int = _agent_default("k")


class ExperimentConfig(_Section):
    """A whole experiment.

    Attributes:
        name: run name (default output directory ``runs/<name>``).
        description: free text.
        models: models to evaluate.
        corpora: bundled corpus names or corpus directories (``corpus: X`` is shorthand
            for ``corpora: [X]``).
        import_path: directories searched first for the modules of ``module:function``
            conditions (relative ones against the config file's directory). Default:
            the config file's directory when a condition is an import path, else
            none. The current directory is not searched unless listed. Where the code
            lives is not part of the config hash.
        conditions: deployment conditions (default: the six bundled ones). An entry
            is a bundled name, a ``module:function`` import path of a graph builder
            or an entry-point name (group ``safescale.conditions``); each is built
            and checked against the condition contract when the config loads.
        retrieval: retrieval settings.
        agentic: agentic RAG settings.
        context_budget: max-context prompt token budget (None or ``max``: the model's
            limit); a list sweeps it (a scalar is a one-value list; the first value is
            the base the other conditions run at).
        max_context: how max-context orders and leaves out passages.
        compute: compute budgets.
        answer: how answers are read (formulation, calibration).
        detection: detection settings.
        reliance: the causal-reliance stage (evidence masking on the frozen responses).
        bootstrap: bootstrap settings of the metrics.
        metrics: metric settings.
        seed: the run seed (sampling, splits).
        output_dir: run directory (None: ``runs/<name>``).
        limit: at most this many items per corpus, after ``item_filter``.
        item_filter: item selection.
        shard_size: items per work unit of the runner.
        conflict_dose: the conflict-dose sweep: numbers of contradicting passages from
            each item's conflicting pool added to its evidence or retrieval candidates
            (:mod:`safescale.corpora.conflict`); default ``[0]`` (no injection).
        tracking: experiment trackers the finished run is logged to (not hashed).
        axis_conditions: which conditions each scale axis applies to (None: every
            condition that reads it; see :class:`AxisConditions`).
    """

    name: str = Field(min_length=1, pattern=SLUG_PATTERN)
    description: str | None = None
    models: tuple[ModelConfig, ...] = Field(min_length=1)
    corpora: tuple[str, ...] = Field(min_length=1)
    import_path: tuple[Path, ...] = ()
    conditions: tuple[ConditionSource, ...] = Field(CONDITIONS, validate_default=True)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    agentic: AgenticConfig = Field(default_factory=AgenticConfig)
    context_budget: tuple[Annotated[int, Field(ge=64)] | None, ...] = (
        _agent_default("context_budget"),
    )
    max_context: MaxContextConfig = Field(default_factory=MaxContextConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    answer: AnswerConfig = Field(default_factory=AnswerConfig)
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    reliance: RelianceSettings = Field(default_factory=RelianceSettings)
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    seed: int = 0
    output_dir: Path | None = None
    limit: int | None = Field(None, ge=1)
    item_filter: ItemFilter | None = None
    shard_size: int = Field(16, ge=1)
    conflict_dose: tuple[int, ...] = (0,)
    tracking: TrackingConfig | None = None
    axis_conditions: AxisConditions | None = None

    @model_validator(mode="before")
    @classmethod
    def _corpus_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "corpus" in data:
            if "corpora" in data:
                raise ValueError("give either 'corpus' or 'corpora', not both")
            data = {**data, "corpora": [data["corpus"]]}
            del data["corpus"]
        return data

    @model_validator(mode="before")
    @classmethod
    def _default_import_path(cls, data: Any, info: ValidationInfo) -> Any:
        """A config file that names a condition by import path searches its own
        directory for it unless it gives ``import_path`` itself."""
        context = info.context or {}
        if not isinstance(data, dict):
            return data
        extra = [str(d) for d in context.get("extra_import_path") or ()]
        named = data.get("conditions")
        by_path = isinstance(named, list | tuple) and any(
            isinstance(c, str) and ":" in c for c in named
        )
        if "import_path" not in data and (by_path or extra):
            own = ["."] if by_path and context.get("config_dir") is not None else []
            return {**data, "import_path": [*extra, *own]}
        if extra:
            given = data["import_path"]
            given = [given] if isinstance(given, str) else list(given or [])
            return {**data, "import_path": [*extra, *given]}
        return data

    @field_validator("import_path", mode="before")
    @classmethod
    def _import_dirs(cls, dirs: Any, info: ValidationInfo) -> Any:
        if isinstance(dirs, str | Path):
            dirs = [dirs]
        if not isinstance(dirs, list | tuple):
            return dirs
        base = (info.context or {}).get("config_dir")
        out = []
        for d in dirs:
            if not isinstance(d, str | Path):
                return dirs  # the type error is reported by pydantic
            path = Path(d).expanduser()
            if not path.is_absolute():
                path = Path(base) / path if base is not None else Path.cwd() / path
            path = path.resolve()
            if not path.is_dir():
                raise ValueError(f"{d}: no such directory ({path})")
            if path not in out:
                out.append(path)
        return tuple(out)

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: tuple[ModelConfig, ...]) -> tuple[ModelConfig, ...]:
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names repeat: {names}")
        return models

    @field_validator("corpora")
    @classmethod
    def _corpora_exist(cls, corpora: tuple[str, ...]) -> tuple[str, ...]:
        from safescale.corpora.errors import CorpusError
        from safescale.corpora.loader import list_bundled_corpora, resolve_corpus_path

        if len(set(corpora)) != len(corpora):
            raise ValueError(f"corpora repeat: {list(corpora)}")
        for ref in corpora:
            try:
                resolve_corpus_path(ref)
            except CorpusError:
                raise ValueError(
                    f"{ref!r} is neither a corpus directory nor a bundled corpus "
                    f"(bundled: {list_bundled_corpora()})"
                ) from None
        return corpora

    @field_validator("conditions")
    @classmethod
    def _unique_conditions(
        cls, conditions: tuple[str, ...], info: ValidationInfo
    ) -> tuple[str, ...]:
        if not conditions:
            raise ValueError("at least one condition is needed")
        names = _condition_names(conditions, info.data.get("import_path") or ())
        if len(set(names)) != len(names):
            raise ValueError(f"conditions repeat: {list(conditions)} (names {list(names)})")
        return conditions

    @field_validator("conflict_dose", mode="before")
    @classmethod
    def _doses(cls, doses: Any) -> Any:
        if isinstance(doses, int) and not isinstance(doses, bool):
            doses = [doses]
        if isinstance(doses, list | tuple):
            if not doses:
                raise ValueError("at least one conflict dose is needed (0 = no injection)")
            if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in doses):
                raise ValueError(f"conflict doses must be integers >= 0, got {list(doses)}")
            big = [d for d in doses if d > MAX_CONFLICT_DOSE]
            if big:
                raise ValueError(
                    f"conflict dose {big[0]} is larger than {MAX_CONFLICT_DOSE} (contradicting "
                    "passages added to one item; a dose beyond an item's conflicting pool "
                    "adds the whole pool)"
                )
            if len(set(doses)) != len(doses):
                raise ValueError(f"conflict doses repeat: {list(doses)}")
            return tuple(sorted(doses))
        return doses

    @field_validator("conditions")
    @classmethod
    def _served_conditions(cls, conditions: tuple[str, ...], info: ValidationInfo) -> tuple:
        chat = [m.name for m in info.data.get("models") or () if m.kind == "openai-chat"]
        names = _condition_names(conditions, info.data.get("import_path") or ())
        if chat and "agentic_rag" in names:
            raise ValueError(
                f"agentic_rag: its critic reads its judgements as continuations, which "
                f"model {chat[0]!r} (kind: openai-chat) cannot score (chat endpoints return "
                "log-probs of generated tokens only); drop the condition or serve the model "
                "through /v1/completions (kind: openai)"
            )
        return conditions

    @field_validator("answer")
    @classmethod
    def _served_formulation(cls, answer: AnswerConfig, info: ValidationInfo) -> AnswerConfig:
        chat = [m.name for m in info.data.get("models") or () if m.kind == "openai-chat"]
        if chat and answer.formulation.startswith("cloze_"):
            raise ValueError(
                f"formulation: {answer.formulation} needs prompt log-probs, which model "
                f"{chat[0]!r} (kind: openai-chat) cannot return (chat endpoints give log-probs "
                "of generated tokens only); use auto or letter, letter_cyclic, letter_pride"
            )
        return answer

    @field_validator("reliance")
    @classmethod
    def _served_reliance(cls, reliance: RelianceSettings, info: ValidationInfo):
        served = [m.name for m in info.data.get("models") or () if m.served]
        if reliance.enabled and served:
            raise ValueError(
                f"enabled: the reliance stage masks attention inside the model that answered, "
                f"which needs its weights; model {served[0]!r} is served"
            )
        return reliance

    @field_validator("context_budget", mode="before")
    @classmethod
    def _budgets(cls, budgets: Any) -> Any:
        if isinstance(budgets, bool):
            raise ValueError("a context budget is an integer >= 64, null or 'max'")
        budgets = _axis_list(budgets, "context budget")
        if isinstance(budgets, tuple):
            bad = [b for b in budgets if isinstance(b, str) and b != "max"]
            if bad:
                raise ValueError(
                    f"context budgets are token counts >= 64, or null / 'max' for the "
                    f"model's limit; got {bad[0]!r}"
                )
            budgets = tuple(None if b == "max" else b for b in budgets)
        return budgets

    @field_validator("context_budget")
    @classmethod
    def _budgets_unique(cls, budgets: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return _unique(budgets, "context budgets")

    @field_validator("axis_conditions")
    @classmethod
    def _axis_conditions_known(
        cls, axes: AxisConditions | None, info: ValidationInfo
    ) -> AxisConditions | None:
        conditions = info.data.get("conditions")
        if axes is None or conditions is None:
            return axes
        known = _condition_names(conditions, info.data.get("import_path") or ())
        for axis in SCALE_AXES:
            unknown = [c for c in axes.named(axis) or () if c not in known]
            if unknown:
                raise ValueError(
                    f"{axis}: {unknown[0]!r} is not a condition of this config "
                    f"(conditions: {', '.join(known)})"
                )
        return axes

    @field_validator("reliance")
    @classmethod
    def _reliance_conditions(
        cls, reliance: RelianceSettings, info: ValidationInfo
    ) -> RelianceSettings:
        conditions = info.data.get("conditions")
        if conditions is None or not reliance.enabled:
            return reliance
        names = _condition_names(conditions, info.data.get("import_path") or ())
        if reliance.conditions is not None:
            unknown = [c for c in reliance.conditions if c not in names]
            if unknown:
                raise ValueError(
                    f"conditions: {unknown[0]!r} is not a condition of this run "
                    f"({', '.join(names)})"
                )
            if "closed_book" in reliance.conditions:
                raise ValueError(
                    "conditions: closed_book carries no evidence, so there is nothing to mask"
                )
            if not reliance.conditions:
                raise ValueError("conditions: empty (omit it to measure every condition)")
        elif all(n == "closed_book" for n in names):
            raise ValueError(
                "enabled, but no condition of this run carries evidence (closed_book "
                "only): there is nothing to mask"
            )
        return reliance

    @field_validator("metrics")
    @classmethod
    def _comparisons_known(cls, metrics: MetricsConfig, info: ValidationInfo) -> MetricsConfig:
        conditions = info.data.get("conditions")
        if conditions is None:  # invalid conditions are reported on their own
            return metrics
        names = _condition_names(conditions, info.data.get("import_path") or ())
        known = [*CONDITIONS, *(n for n in names if n not in CONDITIONS)]
        for a, b in metrics.comparisons or ():
            unknown = [c for c in (a, b) if c not in known]
            if unknown:
                raise ValueError(
                    f"comparison [{a}, {b}]: unknown condition(s) {unknown}; "
                    f"known: {', '.join(known)}"
                )
        return metrics

    @property
    def condition_names(self) -> tuple[str, ...]:
        """The names the conditions' records carry, in config order."""
        return _condition_names(self.conditions, self.import_path)

    def build_condition(self, name: str, checkpointer: Any = None) -> Any:
        """Compile the graph of the condition recorded as ``name`` (its source resolved
        with this config's ``import_path``)."""
        from safescale.agents.registry import build_condition

        return build_condition(self.condition_source(name), checkpointer, self.import_path)

    def condition_source(self, name: str) -> str:
        """The ``conditions`` entry of the condition recorded as ``name``."""
        for source, recorded in zip(self.conditions, self.condition_names, strict=True):
            if recorded == name:
                return source
        raise KeyError(f"condition {name!r} is not in this config ({list(self.condition_names)})")

    @property
    def run_dir(self) -> Path:
        """The run directory: ``output_dir`` or ``runs/<name>``."""
        return self.output_dir if self.output_dir is not None else Path("runs") / self.name

    def axis_values(self, axis: str) -> tuple[Any, ...]:
        """Every value of a scale axis (a key of :data:`SCALE_AXES`), as configured."""
        values = {
            "compute_samples": self.compute.samples,
            "conflict_dose": self.conflict_dose,
            "context_budget": self.context_budget,
            "retrieval_k": self.retrieval.k,
        }
        return values[axis]

    def axis_conditions_of(self, axis: str) -> tuple[str, ...]:
        """The conditions a scale axis applies to (see :class:`AxisConditions`)."""
        named = self.axis_conditions.named(axis) if self.axis_conditions else None
        if named is not None:
            return tuple(c for c in self.condition_names if c in named)
        return default_axis_conditions(axis, self.condition_names)

    def condition_axis_values(self, axis: str, condition: str) -> tuple[Any, ...]:
        """The values of an axis a condition runs at: all of them when the axis applies
        to it, else the base value alone (none when the base dose 0 is not swept)."""
        values = self.axis_values(axis)
        if condition in self.axis_conditions_of(axis):
            return values
        if axis == "conflict_dose":
            return (0,) if 0 in values else ()
        return values[:1]

    def grid(self) -> list[GridCell]:
        """The sweep: every model × corpus × condition × compute budget × conflict dose
        × context budget × retrieval depth, in that order, each axis over the conditions
        it applies to (see :meth:`condition_axis_values`)."""
        cells = []
        for model in self.models:
            for corpus in self.corpora:
                for condition in self.condition_names:
                    values = [self.condition_axis_values(a, condition) for a in SCALE_AXES]
                    for budget in values[0]:
                        for dose in values[1]:
                            for context in values[2]:
                                for k in values[3]:
                                    cells.append(
                                        GridCell(model, corpus, condition, budget, dose,
                                                 context, k)
                                    )  # fmt: skip
        return cells

    def swept_axes(self) -> tuple[str, ...]:
        """The scale axes with more than one value (the keys of :data:`SCALE_AXES`)."""
        return tuple(a for a in SCALE_AXES if len(self.axis_values(a)) > 1)

    def with_overrides(self, **changes: Any) -> ExperimentConfig:
        """A validated copy with top-level fields replaced (e.g. ``limit``,
        ``output_dir``); raises :class:`ConfigError` if the result is invalid."""
        data = self.model_dump(mode="python")
        data.update(changes)
        try:
            return ExperimentConfig.model_validate(data)
        except ValidationError as error:
            raise ConfigError(
                [f"override: {_loc_text(e['loc'])}: {e['msg']}" for e in error.errors()]
            ) from None

    def to_yaml(self) -> str:
        """The resolved config as YAML (every default written out; loads back equal)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def config_hash(self) -> str:
        """See :func:`config_hash`."""
        return config_hash(self)


def _condition_names(sources: Sequence[str], import_path: Sequence[Path] = ()) -> tuple[str, ...]:
    from safescale.agents.registry import resolve_condition

    return tuple(resolve_condition(source, import_path).name for source in sources)


def config_hash(config: ExperimentConfig) -> str:
    """sha256 of the canonical JSON of the resolved config, ``output_dir``, ``limit``,
    ``tracking``, ``import_path``, the models' ``items_in_flight`` and
    ``prefix_cache_mb`` and the detection settings but ``enabled`` excluded.

    Two configs that differ only in where the run is written (or logged: ``tracking``
    is excluded too), or in how many items of
    the same nested order they take (``limit``: a larger limit extends a run), or in
    how many items a model answers at once (``items_in_flight``) or how much of their
    prompts' KV states it keeps (``prefix_cache_mb``), which give the same answers,
    or in where their condition modules are found (``import_path``), or in where and how
    fast a served model is reached (:data:`CONNECTION_FIELDS`), hash equally; any
    other change (including a default made explicit with a different value) changes it.
    A one-value ``context_budget`` or ``retrieval.k`` list hashes as the scalar it is,
    an unset ``axis_conditions`` and ``max_context`` with ``order: similarity`` are
    left out, and the default comparisons (``metrics.comparisons`` unset) hash as the
    fixed list they were before they became per-run. Of the detection settings only
    ``enabled`` counts: the others decide how frozen responses are scored, never an
    answer. A run made under an earlier rule still resumes: the runner re-reads its own
    ``config.yaml``.
    """
    data = config.model_dump(
        mode="json", exclude={"output_dir", "limit", "tracking", "import_path"}
    )
    for model in data.get("models", []):
        model.pop("items_in_flight", None)
        model.pop("prefix_cache_mb", None)
        if model.get("kind", "local") == "local":  # hashes of local runs as before
            for key in ("kind", *SERVED_FIELDS):
                model.pop(key, None)
        for key in CONNECTION_FIELDS:  # where the server is, not what it computes
            model.pop(key, None)
    if data.get("max_context") == {"order": "similarity"}:
        del data["max_context"]
    detection = data.get("detection") or {}
    data["detection"] = {"enabled": detection.get("enabled", False)}
    if data.get("axis_conditions") is None:
        data.pop("axis_conditions", None)
    if len(data.get("context_budget") or ()) == 1:
        data["context_budget"] = data["context_budget"][0]
    retrieval = data.get("retrieval") or {}
    if len(retrieval.get("k") or ()) == 1:
        retrieval["k"] = retrieval["k"][0]
    if data.get("metrics", {}).get("comparisons") is None:
        data["metrics"]["comparisons"] = [list(p) for p in LEGACY_DEFAULT_COMPARISONS]
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------- loading


def list_bundled_configs() -> list[str]:
    """Names of the bundled experiment configs, sorted."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A config file path: an existing file as is, else a bundled config by name.

    Raises:
        ConfigError: neither a file nor a bundled name (the message lists the names).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = CONFIGS_DIR / f"{name_or_path}.yaml"
    if isinstance(name_or_path, str) and "/" not in name_or_path and bundled.is_file():
        return bundled
    raise ConfigError(
        [
            f"{name_or_path}: no such config file and no bundled config of this name "
            f"(bundled: {', '.join(list_bundled_configs()) or 'none'})"
        ]
    )


def load_config(
    name_or_path: str | Path, *, import_path: Sequence[str | Path] = ()
) -> ExperimentConfig:
    """Load, validate and freeze an experiment config (bundled name or YAML path).

    Args:
        name_or_path: a bundled config name or a YAML file.
        import_path: directories searched for import-path conditions before the
            config's own ``import_path`` (``safescale run --import-path``).

    Raises:
        ConfigError: the file is missing, is not YAML, has a duplicated key, or fails
            validation; every problem is reported as ``file:line: key: message``.
    """
    path = resolve_config_path(name_or_path)
    return parse_config(
        path.read_text(encoding="utf-8"),
        source=str(path),
        config_dir=path.resolve().parent,
        import_path=import_path,
    )


def parse_config(
    text: str,
    *,
    source: str = "<config>",
    config_dir: str | Path | None = None,
    import_path: Sequence[str | Path] = (),
) -> ExperimentConfig:
    """Validate a YAML string as an :class:`ExperimentConfig` (see :func:`load_config`).

    Args:
        text: the YAML.
        source: the file name errors carry.
        config_dir: the directory relative ``import_path`` entries resolve against
            (and the default import path); None: the current directory for relative
            entries and no default.
        import_path: extra directories searched first (``--import-path``).
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError([f"{source}:{line}: not valid YAML: {error}"]) from None
    if root is None:
        raise ConfigError([f"{source}:1: the config is empty"])
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError([f"{source}:{root.start_mark.line + 1}: the config must be a mapping"])
    marks: dict[tuple[Any, ...], int] = {}
    problems: list[str] = []
    _index_marks(root, (), marks, problems, source)
    if problems:
        raise ConfigError(problems)
    data = yaml.safe_load(text)
    context = {
        "config_dir": None if config_dir is None else Path(config_dir),
        "extra_import_path": [Path(d).expanduser().resolve() for d in import_path],
    }
    try:
        config = ExperimentConfig.model_validate(data, context=context)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        locs = [_yaml_loc(tuple(e["loc"])) for e in errors]
        # A container error caused by a failing entry (e.g. "too short" after a bad
        # model entry) says nothing new: keep only the deepest errors.
        kept = [
            e
            for e, loc in zip(errors, locs, strict=True)
            if not any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs)
        ]
        raise ConfigError([_describe(e, marks, source) for e in kept]) from None
    if config_dir is not None:
        _check_models(config, data, marks, source)
    return config


def _check_models(
    config: ExperimentConfig, data: Any, marks: dict[tuple[Any, ...], int], source: str
) -> None:
    """A config file's models must name something loadable (a registered name, a model
    directory or ``.gguf`` file, a Hugging Face id): checked without loading, so that an
    unknown name or a missing ``spec:`` directory is the config's ``file:line``, not a
    failure after the run started. (A config given as text, without a file, is data
    only: its models are checked when they load.)"""
    from safescale.models.registry import model_spec_problem

    problems = []
    for index, model in enumerate(config.models):
        entry = data["models"][index] if isinstance(data.get("models"), list) else None
        loc: tuple[Any, ...] = ("models", index)
        if model.served:  # the weights are the server's; what loads here is named apart
            for field in ("tokenizer", "whitebox"):
                spec = getattr(model, field)
                problem = model_spec_problem(spec) if spec else None
                if problem is not None:
                    where = (*loc, field)
                    problems.append(
                        f"{source}:{_line_for(where, marks)}: {_loc_text(where)}: {problem}"
                    )
            continue
        problem = model_spec_problem(model.source)
        if problem is None:
            continue
        if isinstance(entry, dict) and "spec" in entry:
            loc = (*loc, "spec")
        elif isinstance(entry, dict):
            loc = (*loc, "name")
        problems.append(f"{source}:{_line_for(loc, marks)}: {_loc_text(loc)}: {problem}")
    if problems:
        raise ConfigError(problems)


def _index_marks(
    node: yaml.Node,
    loc: tuple[Any, ...],
    marks: dict[tuple[Any, ...], int],
    problems: list[str],
    source: str,
) -> None:
    """Record the 1-based line of every key / sequence entry, and flag duplicate keys."""
    marks.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(
                    f"{source}:{line}: {_loc_text((*loc, key))}: duplicated key "
                    f"(first given on line {seen[key]})"
                )
                continue
            seen[key] = line
            marks[(*loc, key)] = line
            _index_marks(value_node, (*loc, key), marks, problems, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            _index_marks(child, (*loc, index), marks, problems, source)


def _loc_text(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _yaml_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Map a pydantic error location back to the YAML one (``corpora`` may have been
    written as ``corpus``; union / validator tags are dropped)."""
    out: list[Any] = []
    for part in loc:
        if isinstance(part, str) and (
            part.startswith("function-") or part in {"str", "int", "list[...]", "tuple[...]"}
        ):
            continue
        out.append(part)
    return tuple(out)


def _line_for(loc: tuple[Any, ...], marks: dict[tuple[Any, ...], int]) -> int:
    if loc and loc[0] == "corpora" and ("corpora",) not in marks and ("corpus",) in marks:
        loc = ("corpus", *loc[2:])
    for end in range(len(loc), -1, -1):
        if loc[:end] in marks:
            return marks[loc[:end]]
    return 1


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at ``loc`` (best effort)."""
    model: Any = ExperimentConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = unwrap_annotation(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def unwrap_annotation(annotation: Any) -> Any:
    for _ in range(4):
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType, tuple, list):
            args = [a for a in typing.get_args(annotation) if a is not type(None) and a is not ...]
            if not args:
                return None
            annotation = args[0]
        else:
            return annotation
    return annotation


def _describe(error: dict[str, Any], marks: dict[tuple[Any, ...], int], source: str) -> str:
    loc = _yaml_loc(tuple(error["loc"]))
    line = _line_for(loc, marks)
    where = _loc_text(loc)
    if error["type"] == "extra_forbidden":
        key = loc[-1] if loc else "?"
        message = f"unknown key {key!r}"
        section = _section_model(loc[:-1])
        if section is not None:
            allowed = list(section.model_fields)
            close = difflib.get_close_matches(str(key), allowed, n=1)
            message += f" (did you mean {close[0]!r}?)" if close else ""
            message += f"; allowed keys: {', '.join(allowed)}"
        return f"{source}:{line}: {where}: {message}"
    if error["type"] == "missing":
        return f"{source}:{line}: {where}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{source}:{line}: {where}: {message}"
