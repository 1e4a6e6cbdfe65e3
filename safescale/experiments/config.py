"""Experiment configuration: one YAML file -> a frozen, validated :class:`ExperimentConfig`.

Every section rejects unknown keys; :func:`load_config` reports a typo (or any other
invalid value) as a :class:`ConfigError` naming the key, the file and the line::

    safescale/experiments/configs/demo.yaml:7: retreival: unknown key (did you mean 'retrieval'?)

A run covers the cross product ``models × corpora × conditions × compute.samples ×
conflict_dose`` (:meth:`ExperimentConfig.grid`; closed-book has no evidence, so it runs
at dose 0 only). Bundled configs live in ``experiments/configs/`` and
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
from safescale.experiments.bootstrap import BootstrapConfig
from safescale.experiments.metrics import CONDITIONS, MetricsConfig
from safescale.records import SLUG_PATTERN, check_slug

__all__ = [
    "CONDITIONS",
    "CONFIGS_DIR",
    "AgenticConfig",
    "AnswerConfig",
    "ComputeConfig",
    "ConfigError",
    "DetectionSettings",
    "ExperimentConfig",
    "GridCell",
    "ItemFilter",
    "MaxContextConfig",
    "ModelConfig",
    "RelianceSettings",
    "RetrievalConfig",
    "config_hash",
    "list_bundled_configs",
    "load_config",
    "parse_config",
    "resolve_config_path",
]

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def _condition_source(source: str) -> str:
    """Resolve, build and contract-check one ``conditions`` entry (no model call)."""
    from safescale.agents.registry import ConditionError, resolve_condition

    try:
        resolve_condition(source)
    except ConditionError as error:
        raise ValueError(str(error)) from None
    return source


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


class ModelConfig(_Section):
    """One model of the sweep. A bare string in the YAML is shorthand for ``{name: ...}``.

    Attributes:
        name: the name results are recorded under.
        spec: what :func:`safescale.models.load_model` loads (registered name, path or
            HF id); defaults to ``name``.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        dtype: weights dtype.
        batch_size: prompts per forward pass when scoring options (and, with
            ``items_in_flight > 1``, rows per merged forward).
        items_in_flight: items of a shard answered at once; their cloze and letter
            scoring calls are merged into padded batches of up to ``batch_size`` prompts
            (:mod:`safescale.models.microbatch`). 1 answers one item at a time. It
            changes how calls are batched, not what is answered, so it is not part of
            the config hash (a run can be resumed with another value).
        prefix_cache_mb: bound (MiB) of the model's cross-item prefix cache: the KV
            states of prompt prefixes shared across items and calls are computed once
            (:mod:`safescale.models.prefix_cache`; ``docs/prefix-cache.md``). ``0``
            turns it off. The default holds SmolLM2-135M's whole 8,192-token window
            in float32 (46 KB a token) plus the tails of the prompts around it. The
            same answers either way (to float tolerance), so it is not part of the
            config hash either.
    """

    name: str = Field(min_length=1)
    spec: str | None = None
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = Field(8, ge=1)
    items_in_flight: int = Field(1, ge=1)
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

    @property
    def source(self) -> str:
        """The spec to load (``spec`` or, if unset, ``name``)."""
        return self.spec or self.name


class RetrievalConfig(_Section):
    """Retrieval settings of the RAG conditions.

    Attributes:
        k: passages retrieved per query.
        index_type: FAISS index kind.

    Agentic RAG always reranks by grade and status; standard RAG never does (that is
    the difference the conditions measure), so there is no rerank switch.
    """

    k: int = Field(_agent_default("k"), ge=1)
    index_type: Literal["flat", "ivf", "hnsw"] = "flat"


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
    :mod:`safescale.experiments.calibration`).

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


class GridCell(NamedTuple):
    """One (model, corpus, condition, compute budget, conflict dose) combination of a
    sweep (``condition`` is the recorded name; see :meth:`ExperimentConfig.condition_source`)."""

    model: ModelConfig
    corpus: str
    condition: str
    samples_budget: int
    conflict_dose: int = 0


class ExperimentConfig(_Section):
    """A whole experiment.

    Attributes:
        name: run name (default output directory ``runs/<name>``).
        description: free text.
        models: models to evaluate.
        corpora: bundled corpus names or corpus directories (``corpus: X`` is shorthand
            for ``corpora: [X]``).
        conditions: deployment conditions (default: the six bundled ones). An entry
            is a bundled name, a ``module:function`` import path of a graph builder
            or an entry-point name (group ``safescale.conditions``); each is built
            and checked against the condition contract when the config loads.
        retrieval: retrieval settings.
        agentic: agentic RAG settings.
        context_budget: prompt token budget for the evidence (None: the model's limit).
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
    """

    name: str = Field(min_length=1, pattern=SLUG_PATTERN)
    description: str | None = None
    models: tuple[ModelConfig, ...] = Field(min_length=1)
    corpora: tuple[str, ...] = Field(min_length=1)
    conditions: tuple[ConditionSource, ...] = CONDITIONS
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    agentic: AgenticConfig = Field(default_factory=AgenticConfig)
    context_budget: int | None = Field(_agent_default("context_budget"), ge=64)
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

    @model_validator(mode="before")
    @classmethod
    def _corpus_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "corpus" in data:
            if "corpora" in data:
                raise ValueError("give either 'corpus' or 'corpora', not both")
            data = {**data, "corpora": [data["corpus"]]}
            del data["corpus"]
        return data

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
    def _unique_conditions(cls, conditions: tuple[str, ...]) -> tuple[str, ...]:
        if not conditions:
            raise ValueError("at least one condition is needed")
        names = _condition_names(conditions)
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
            if len(set(doses)) != len(doses):
                raise ValueError(f"conflict doses repeat: {list(doses)}")
            return tuple(sorted(doses))
        return doses

    @field_validator("metrics")
    @classmethod
    def _comparisons_known(cls, metrics: MetricsConfig, info: ValidationInfo) -> MetricsConfig:
        conditions = info.data.get("conditions")
        if conditions is None:  # invalid conditions are reported on their own
            return metrics
        known = [*CONDITIONS, *(n for n in _condition_names(conditions) if n not in CONDITIONS)]
        for a, b in metrics.comparisons:
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
        return _condition_names(self.conditions)

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

    def grid(self) -> list[GridCell]:
        """The sweep: every model × corpus × condition × compute budget × conflict dose,
        in that order (closed-book at dose 0 only: it has no evidence to add to)."""
        return [
            GridCell(model, corpus, condition, budget, dose)
            for model in self.models
            for corpus in self.corpora
            for condition in self.condition_names
            for budget in self.compute.samples
            for dose in self.conflict_dose
            if dose == 0 or condition != "closed_book"
        ]

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


def _condition_names(sources: Sequence[str]) -> tuple[str, ...]:
    from safescale.agents.registry import resolve_condition

    return tuple(resolve_condition(source).name for source in sources)


def config_hash(config: ExperimentConfig) -> str:
    """sha256 of the canonical JSON of the resolved config, ``output_dir``, ``limit`` and
    the models' ``items_in_flight`` and ``prefix_cache_mb`` excluded.

    Two configs that differ only in where the run is written, or in how many items of
    the same nested order they take (``limit``: a larger limit extends a run), or in
    how many items a model answers at once (``items_in_flight``) or how much of their
    prompts' KV states it keeps (``prefix_cache_mb``), which give the same answers,
    hash equally; any other change (including a default made explicit with a different
    value) changes it. ``max_context`` with ``order: similarity`` (the packing of runs
    made before the section existed) is left out, so those runs' hashes are unchanged.
    """
    data = config.model_dump(mode="json", exclude={"output_dir", "limit"})
    for model in data.get("models", []):
        model.pop("items_in_flight", None)
        model.pop("prefix_cache_mb", None)
    if data.get("max_context") == {"order": "similarity"}:
        del data["max_context"]
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


def load_config(name_or_path: str | Path) -> ExperimentConfig:
    """Load, validate and freeze an experiment config (bundled name or YAML path).

    Raises:
        ConfigError: the file is missing, is not YAML, has a duplicated key, or fails
            validation; every problem is reported as ``file:line: key: message``.
    """
    path = resolve_config_path(name_or_path)
    return parse_config(path.read_text(encoding="utf-8"), source=str(path))


def parse_config(text: str, *, source: str = "<config>") -> ExperimentConfig:
    """Validate a YAML string as an :class:`ExperimentConfig` (see :func:`load_config`)."""
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
    try:
        return ExperimentConfig.model_validate(data)
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
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
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
