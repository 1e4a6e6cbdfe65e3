"""The run directory's one reader: :class:`RunDir` (and :class:`RunData`, what the
metrics read).

Every persisted object is a model of the contract :mod:`safescale.rundir.records`
(typed, versioned, migrated on read); report, metrics, detect, trace, replay and the
viewer all read through :class:`RunDir`. A partial last JSONL line (an interrupted
write) is ignored; any other bad line is an error naming the file and line.

Nothing here loads a model (nor imports torch).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from safescale.rundir.io import JsonlContents, read_json, read_jsonl
from safescale.rundir.layout import (
    ATTRIBUTION_FILE,
    CONFIG_FILE,
    DETECTION_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    RELIANCE_FILE,
    REPLAYS_FILE,
    RESPONSES_FILE,
    STEPS_FILE,
    TRIAGE_FILE,
    RunDirError,
)
from safescale.rundir.records import (
    DEFAULT_RETRIEVAL_K,
    AttributionRecord,
    MetricsReport,
    RelianceRecord,
    ReplayRecord,
    ResponseKey,
    ResponseRecord,
    RunManifest,
    StepRecord,
    TriageReportRecord,
    check_slug,
)

if TYPE_CHECKING:
    import pandas as pd

    from safescale.corpora.corpus import Corpus

__all__ = [
    "RunData",
    "RunDir",
    "item_corpus_map",
    "legacy_axis_values",
    "load_attribution",
    "load_responses",
    "load_run",
    "load_run_corpora",
    "load_steps",
    "load_triage",
    "read_manifest",
    "records_frame",
    "response_key",
    "with_legacy_axes",
]

RecordT = TypeVar("RecordT", bound=BaseModel)


def _describe(error: ValidationError | ValueError) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(record)"
        message = str(first["msg"]).removeprefix("Value error, ")
        more = error.error_count() - 1
        return f"{where}: {message}" + (f" (and {more} more)" if more else "")
    return f"schema_version: {error}"


def _validate(model: type[RecordT], data: Any, where: str) -> RecordT:
    try:
        return model.model_validate(data)
    except (ValidationError, ValueError) as error:
        raise RunDirError(f"{where}: {_describe(error)} (not a {model.__name__})") from None


def _validate_rows(
    contents: JsonlContents, model: type[RecordT], axes: Mapping[str, Any] | None = None
) -> list[RecordT]:
    fill = with_legacy_axes if model is not ReplayRecord else _replay_with_axes
    return [
        _validate(model, fill(row, axes), f"{contents.path}:{number}")
        for row, number in zip(contents.rows, contents.line_numbers, strict=True)
    ]


def with_legacy_axes(row: dict[str, Any], axes: Mapping[str, Any] | None) -> dict[str, Any]:
    """A stored record row with the run's single configured value of each scale axis
    it does not record (a row written before the axis was recorded)."""
    if not axes or not isinstance(row, dict):
        return row
    missing = {k: v for k, v in axes.items() if k not in row}
    return {**row, **missing} if missing else row


def _replay_with_axes(row: dict[str, Any], axes: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`with_legacy_axes` for the response and steps inside a replay row."""
    if not axes or not isinstance(row, dict):
        return row
    out = dict(row)
    out["response"] = with_legacy_axes(row.get("response"), axes)
    if isinstance(row.get("steps"), list):
        out["steps"] = [with_legacy_axes(step, axes) for step in row["steps"]]
    return out


def _single(value: Any) -> tuple[bool, Any]:
    """(True, v) for a scalar or a one-entry list, (False, None) for a longer list."""
    if isinstance(value, list | tuple):
        return (True, value[0]) if len(value) == 1 else (False, None)
    return True, value


def legacy_axis_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a record without a scale axis ran at, from a run's resolved config data.

    A run made before the context budget and the retrieval depth were recorded had one
    value of each: its ``context_budget`` (None: the model's maximum) and its
    ``retrieval.k`` (default 5). A config with several values records them in every
    row, so nothing is filled in for that axis.
    """
    out: dict[str, Any] = {}
    single, budget = _single(config.get("context_budget"))
    if single:
        out["context_budget"] = None if budget in (None, "max") else int(budget)
    retrieval = config.get("retrieval")
    raw_k = retrieval.get("k", DEFAULT_RETRIEVAL_K) if isinstance(retrieval, dict) else None
    single, k = _single(DEFAULT_RETRIEVAL_K if raw_k is None else raw_k)
    if single:
        out["retrieval_k"] = int(k)
    return out


def response_key(record: ResponseRecord) -> ResponseKey:
    """Identity of a response in a run: (model, condition, item, samples_budget,
    conflict_dose, context_budget, retrieval_k)."""
    return record.key


def item_corpus_map(corpora: Mapping[str, Corpus]) -> dict[str, str]:
    """Item id -> corpus name over several corpora.

    Raises:
        RunDirError: an item id occurs in two corpora (responses could not be assigned).
    """
    owner: dict[str, str] = {}
    for name, corpus in corpora.items():
        for item in corpus.items:
            if item.id in owner and owner[item.id] != name:
                raise RunDirError(
                    f"item id {item.id!r} occurs in corpora {owner[item.id]!r} and {name!r}; "
                    "responses cannot be assigned to one corpus"
                )
            owner[item.id] = name
    return owner


@dataclass(frozen=True)
class RunData:
    """Everything the metrics read from a run directory.

    Attributes:
        run_dir: the directory.
        manifest: ``manifest.json`` as a (migrated, validated) plain dict.
        responses: validated, de-duplicated responses.
        corpora: corpora by name.
        attribution: failure attributions (may be empty).
        triage: ``detection/triage.json`` contents (plain dicts), or None.
        notes: human-readable notes (ignored truncated lines, dropped duplicates).
        reliance: causal-reliance records of the responses (may be empty).
    """

    run_dir: Path
    manifest: dict[str, Any]
    responses: list[ResponseRecord]
    corpora: dict[str, Corpus]
    attribution: list[AttributionRecord] = field(default_factory=list)
    triage: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)
    reliance: list[RelianceRecord] = field(default_factory=list)


class RunDir:
    """Typed read access to a run directory (the one reader every command uses).

    Args:
        path: the run directory.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------ paths
    def file(self, name: str | Path) -> Path:
        """A path inside the run directory."""
        return self.path / name

    def detection_dir(self, model: str, corpus: str) -> Path:
        """``detection/<model>__<corpus>/`` (both names must be slugs)."""
        check_slug(model, "model name")
        check_slug(corpus, "corpus name")
        return self.path / DETECTION_DIR / f"{model}__{corpus}"

    def require(self) -> None:
        """Raise RunDirError unless this is a run directory (it has a manifest)."""
        if not self.path.exists():
            raise RunDirError(f"{self.path}: no such directory")
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: not a directory")
        if not (self.path / MANIFEST_FILE).is_file():
            raise RunDirError(
                f"{self.path / MANIFEST_FILE}: no such file (is {self.path} a run directory?)"
            )

    # ------------------------------------------------------------ records
    def manifest(self) -> RunManifest:
        """The validated manifest (migrated to the current schema version)."""
        self.require()
        path = self.path / MANIFEST_FILE
        data = read_json(path)
        if not isinstance(data, dict):
            raise RunDirError(f"{path}:1: expected a JSON object")
        return _validate(RunManifest, data, str(path))

    def responses_with_contents(self) -> tuple[list[ResponseRecord], JsonlContents]:
        """Validated responses, one per key (the last line of a repeated key wins),
        and the raw file contents (for the truncated-line note)."""
        path = self.path / RESPONSES_FILE
        if not path.is_file():
            if not self.path.is_dir():
                raise RunDirError(f"{self.path}: no such directory")
            raise RunDirError(f"{path}: no such file (is {self.path} a run directory?)")
        contents = read_jsonl(path)
        records = _validate_rows(contents, ResponseRecord, self.legacy_axes())
        unique = {r.key: r for r in records}
        return list(unique.values()), contents

    def responses(self) -> list[ResponseRecord]:
        """Validated, de-duplicated responses (RunDirError when there are none)."""
        records, contents = self.responses_with_contents()
        if not records:
            raise RunDirError(f"{contents.path}: holds no responses")
        return records

    def legacy_axes(self) -> dict[str, Any]:
        """What a record without a scale axis ran at (see :func:`legacy_axis_values`):
        read from the run's ``config.yaml`` ({} without one)."""
        return legacy_axis_values(self.config_data())

    def response_keys(self) -> set[ResponseKey]:
        """Keys of the committed responses (empty when there is no responses file)."""
        if not (self.path / RESPONSES_FILE).is_file():
            return set()
        records, _ = self.responses_with_contents()
        return {r.key for r in records}

    def steps(self) -> list[StepRecord]:
        """Validated step records (empty when there is no ``steps.jsonl``)."""
        path = self.path / STEPS_FILE
        if not path.is_file():
            return []
        return _validate_rows(read_jsonl(path), StepRecord, self.legacy_axes())

    def attribution(self) -> list[AttributionRecord]:
        """Failure attributions (empty when there is no ``attribution.jsonl``)."""
        path = self.path / ATTRIBUTION_FILE
        if not path.is_file():
            return []
        return _validate_rows(read_jsonl(path), AttributionRecord, self.legacy_axes())

    def replays(self) -> list[ReplayRecord]:
        """What-if replays written by ``safescale replay`` (empty when there are none)."""
        path = self.path / REPLAYS_FILE
        if not path.is_file():
            return []
        return _validate_rows(read_jsonl(path), ReplayRecord, self.legacy_axes())

    def reliance(self) -> list[RelianceRecord]:
        """Causal-reliance records (empty when there is no ``reliance.jsonl``); a
        response measured twice keeps its last record."""
        path = self.path / RELIANCE_FILE
        if not path.is_file():
            return []
        rows = _validate_rows(read_jsonl(path), RelianceRecord, self.legacy_axes())
        latest = {r.key: r for r in rows}
        return list(latest.values())

    def triage(self) -> list[TriageReportRecord] | None:
        """The reports of ``detection/triage.json`` (one per model x corpus), or None."""
        path = self.path / TRIAGE_FILE
        if not path.is_file():
            return None
        data = read_json(path)
        if not isinstance(data, list):
            raise RunDirError(f"{path}:1: expected a JSON list of triage reports")
        return [
            _validate(TriageReportRecord, entry, f"{path}: [{i}]") for i, entry in enumerate(data)
        ]

    def metrics(self) -> MetricsReport:
        """``metrics.json`` (RunDirError when absent: run ``safescale report`` first)."""
        path = self.path / METRICS_FILE
        if not path.is_file():
            raise RunDirError(f"{path}: no such file (run `safescale report {self.path}`)")
        return _validate(MetricsReport, read_json(path), str(path))

    def metrics_data(self) -> dict[str, Any]:
        """``metrics.json`` as stored (plain data; :meth:`metrics` gives the typed
        sections the report and the viewer read), checked against :class:`MetricsReport`
        first.

        Raises:
            RunDirError: absent, not JSON, not a metrics report or of a newer schema
                version than this code reads.
        """
        path = self.path / METRICS_FILE
        if not path.is_file():
            raise RunDirError(f"{path}: no such file (run `safescale report {self.path}`)")
        data = read_json(path)
        _validate(MetricsReport, data, str(path))
        return data

    def config_data(self) -> dict[str, Any]:
        """The resolved config (``config.yaml``) as plain data ({} when absent)."""
        import yaml

        path = self.path / CONFIG_FILE
        if not path.is_file():
            return {}
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise RunDirError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path}:1: expected a mapping")
        return data

    def corpora(self, manifest: RunManifest | None = None) -> dict[str, Corpus]:
        """The run's corpora by name, each checked against the manifest's content hash.

        Raises:
            RunDirError: no corpus recorded, a corpus that does not load, or one whose
                content hash differs from the recorded one.
        """
        from safescale.corpora import CorpusError, load_corpus

        manifest = manifest or self.manifest()
        where = self.path / MANIFEST_FILE
        if not manifest.corpora:
            raise RunDirError(f"{where}: corpora: the run records no corpus")
        corpora: dict[str, Corpus] = {}
        for name, entry in manifest.corpora.items():
            source = entry.path if entry.path and Path(entry.path).is_dir() else entry.ref
            try:
                corpus = load_corpus(source)
            except CorpusError as error:
                raise RunDirError(
                    f"{where}: corpora.{name}: cannot load {source!r}: {error}"
                ) from None
            if corpus.content_hash != entry.content_hash:
                raise RunDirError(
                    f"{where}: corpora.{name}.content_hash: corpus {corpus.name!r} now has "
                    f"content hash {corpus.content_hash[:12]}…, but the run was made with "
                    f"{entry.content_hash[:12]}…; metrics would use other labels"
                )
            corpora[name] = corpus
        return corpora

    def load(self) -> RunData:
        """Responses, corpora, attributions and triage results (what metrics read).

        Raises:
            RunDirError: missing responses, corrupt lines, unknown items or corpus drift.
        """
        manifest = self.manifest()
        responses, contents = self.responses_with_contents()
        notes = []
        if contents.truncated_line is not None:
            notes.append(
                f"{contents.path}:{contents.truncated_line}: truncated last line ignored "
                "(an interrupted write)"
            )
        dropped = len(contents.rows) - len(responses)
        if dropped:
            notes.append(f"{contents.path}: {dropped} duplicated response(s) dropped (last kept)")
        corpora = self.corpora(manifest)
        owner = item_corpus_map(corpora)
        unknown = sorted({r.item for r in responses} - owner.keys())
        if unknown:
            raise RunDirError(
                f"{contents.path}: item: {len(unknown)} item(s) not in the run's corpora "
                f"{sorted(corpora)}: {unknown[:5]}"
            )
        attribution_path = self.path / ATTRIBUTION_FILE
        attribution = self.attribution()
        if attribution_path.is_file():
            tail = read_jsonl(attribution_path).truncated_line
            if tail is not None:
                notes.append(f"{attribution_path}:{tail}: truncated last line ignored")
        triage = self.triage()
        return RunData(
            run_dir=self.path,
            manifest=manifest.model_dump(mode="json"),
            responses=responses,
            corpora=corpora,
            attribution=attribution,
            triage=None if triage is None else [t.model_dump(mode="json") for t in triage],
            notes=notes,
            reliance=self.reliance(),
        )


# ------------------------------------------------------------ thin function wrappers
def load_responses(run_dir: str | Path) -> tuple[list[ResponseRecord], JsonlContents]:
    """:meth:`RunDir.responses_with_contents`."""
    return RunDir(run_dir).responses_with_contents()


def load_steps(run_dir: str | Path) -> list[StepRecord]:
    """:meth:`RunDir.steps`."""
    return RunDir(run_dir).steps()


def load_attribution(run_dir: str | Path) -> list[AttributionRecord]:
    """:meth:`RunDir.attribution`."""
    return RunDir(run_dir).attribution()


def load_triage(run_dir: str | Path) -> list[dict[str, Any]] | None:
    """:meth:`RunDir.triage` as plain dicts (one per model x corpus), or None."""
    reports = RunDir(run_dir).triage()
    return None if reports is None else [r.model_dump(mode="json") for r in reports]


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """:meth:`RunDir.manifest` as a plain dict."""
    return RunDir(run_dir).manifest().model_dump(mode="json")


def load_run_corpora(run_dir: str | Path) -> dict[str, Corpus]:
    """:meth:`RunDir.corpora`."""
    return RunDir(run_dir).corpora()


def load_run(run_dir: str | Path) -> RunData:
    """:meth:`RunDir.load`."""
    return RunDir(run_dir).load()


def records_frame(records: Iterable[BaseModel], *, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """A DataFrame with one row per record (pydantic ``model_dump``; nested values kept
    as Python objects), minus the ``exclude``d columns."""
    import pandas as pd

    rows = [r.model_dump(exclude=set(exclude)) for r in records]
    return pd.DataFrame(rows)
