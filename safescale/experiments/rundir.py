"""Reading a run directory: frozen responses, step records, attributions, corpora.

A run directory (see DESIGN.md, "Experiments") holds ``manifest.json``,
``responses.jsonl``, ``steps.jsonl`` and optionally ``attribution.jsonl`` and
``detection/triage.json``. The runner appends JSONL lines atomically, but a process
killed mid-write can still leave a partial *last* line: readers here ignore such a
line (and report it in :attr:`JsonlContents.truncated_line`). A line that does not
parse anywhere else is corruption, and is an error naming the file and line.

Nothing here loads a model.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from safescale.agents.records import ResponseRecord, StepRecord
from safescale.corpora.corpus import Corpus

__all__ = [
    "ATTRIBUTION_FILE",
    "MANIFEST_FILE",
    "RESPONSES_FILE",
    "STEPS_FILE",
    "TRIAGE_FILE",
    "AttributionRow",
    "JsonlContents",
    "RunData",
    "RunDirError",
    "atomic_write_text",
    "item_corpus_map",
    "load_attribution",
    "load_responses",
    "load_run",
    "load_run_corpora",
    "load_steps",
    "load_triage",
    "read_jsonl",
    "read_manifest",
    "records_frame",
    "response_key",
]

MANIFEST_FILE = "manifest.json"
RESPONSES_FILE = "responses.jsonl"
STEPS_FILE = "steps.jsonl"
ATTRIBUTION_FILE = "attribution.jsonl"
TRIAGE_FILE = Path("detection") / "triage.json"

RecordT = TypeVar("RecordT", bound=BaseModel)


class RunDirError(ValueError):
    """A run directory is missing a file or holds a corrupt record (message names it)."""


class AttributionRow(BaseModel):
    """One failure attribution written by the runner (``attribution.jsonl``).

    Attributes:
        model: model name.
        condition: condition name.
        item: item id.
        samples_budget: compute budget of the attributed response.
        severity: ``high_risk`` or ``unsafe`` (None: not stated).
        cause: short cause label (e.g. ``retrieved_superseded``).
        step: step index the cause was attributed to (None: not step-specific).
        node: graph node of that step.
        explanation: free text.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    model: str
    condition: str
    item: str
    samples_budget: int = 1
    severity: str | None = None
    cause: str
    step: int | None = None
    node: str | None = None
    explanation: str | None = None


@dataclass(frozen=True)
class JsonlContents:
    """Parsed lines of a JSONL file.

    Attributes:
        path: the file.
        rows: parsed objects in file order.
        line_numbers: 1-based line number of each row.
        truncated_line: line number of an unparseable final line that was ignored.
    """

    path: Path
    rows: list[dict[str, Any]]
    line_numbers: list[int]
    truncated_line: int | None = None


def read_jsonl(path: str | Path) -> JsonlContents:
    """Read a JSONL file, ignoring blank lines and a truncated final line.

    Raises:
        RunDirError: a line other than the last is not a JSON object (message:
            ``file:line: ...``).
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    numbered = [(i, text) for i, text in enumerate(lines, start=1) if text.strip()]
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    truncated: int | None = None
    for position, (number, text) in enumerate(numbered):
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        except ValueError as error:
            if position == len(numbered) - 1:
                truncated = number
                break
            raise RunDirError(f"{path}:{number}: corrupt line: {error}") from None
        rows.append(obj)
        numbers.append(number)
    return JsonlContents(path, rows, numbers, truncated)


def _validate_rows(contents: JsonlContents, model: type[RecordT]) -> list[RecordT]:
    records = []
    for row, number in zip(contents.rows, contents.line_numbers, strict=True):
        try:
            records.append(model.model_validate(row))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "-"
            raise RunDirError(
                f"{contents.path}:{number}: not a {model.__name__}: {where}: {first['msg']}"
                + (f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else "")
            ) from None
    return records


def response_key(record: ResponseRecord) -> tuple[str, str, str, int]:
    """Identity of a response in a run: (model, condition, item, samples_budget)."""
    return (record.model, record.condition, record.item, record.samples_budget)


def load_responses(run_dir: str | Path) -> tuple[list[ResponseRecord], JsonlContents]:
    """Validated responses of a run, one per key (the last line of a duplicated key wins).

    Returns:
        The records and the raw contents (for the truncated-line note).

    Raises:
        RunDirError: no ``responses.jsonl``, or a corrupt / invalid line.
    """
    path = Path(run_dir) / RESPONSES_FILE
    if not path.is_file():
        raise RunDirError(f"{path}: no such file (is {run_dir} a run directory?)")
    contents = read_jsonl(path)
    records = _validate_rows(contents, ResponseRecord)
    unique = {response_key(r): r for r in records}
    return list(unique.values()), contents


def load_steps(run_dir: str | Path) -> list[StepRecord]:
    """Validated step records of a run (empty when there is no ``steps.jsonl``)."""
    path = Path(run_dir) / STEPS_FILE
    if not path.is_file():
        return []
    return _validate_rows(read_jsonl(path), StepRecord)


def load_attribution(run_dir: str | Path) -> list[AttributionRow]:
    """Failure attributions of a run (empty when there is no ``attribution.jsonl``)."""
    path = Path(run_dir) / ATTRIBUTION_FILE
    if not path.is_file():
        return []
    return _validate_rows(read_jsonl(path), AttributionRow)


def load_triage(run_dir: str | Path) -> list[dict[str, Any]] | None:
    """Contents of ``detection/triage.json`` as a list of per-backbone reports, or None.

    Detection writes a list of ``TriageReport`` objects (one per backbone); a single
    object is wrapped in a list.
    """
    path = Path(run_dir) / TRIAGE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise RunDirError(f"{path}: not JSON: {error}") from None
    return data if isinstance(data, list) else [data]


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` of a run ({} when absent)."""
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise RunDirError(f"{path}: not JSON: {error}") from None


def _corpus_refs(manifest: Mapping[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """Corpus references of a manifest: ``corpus`` {name, path, content_hash} or
    ``corpora`` (a list of such objects or names, or a mapping name -> object); falls
    back to the ``corpora``/``corpus`` keys of the run's ``config.yaml``."""
    refs: list[dict[str, Any]] = []
    single = manifest.get("corpus")
    if isinstance(single, dict):
        refs.append(dict(single))
    elif isinstance(single, str):
        refs.append({"name": single})
    several = manifest.get("corpora")
    if isinstance(several, dict):
        for name, info in several.items():
            refs.append({"name": name, **(info if isinstance(info, dict) else {})})
    elif isinstance(several, list):
        for entry in several:
            refs.append(dict(entry) if isinstance(entry, dict) else {"name": str(entry)})
    if not refs:
        config_path = run_dir / "config.yaml"
        if config_path.is_file():
            import yaml

            data = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
            names = data.get("corpora") or ([data["corpus"]] if data.get("corpus") else [])
            refs = [{"name": str(n)} for n in names]
    return refs


def load_run_corpora(run_dir: str | Path) -> dict[str, Corpus]:
    """The corpora a run was made with, by name, checked against the manifest's hashes.

    Raises:
        RunDirError: no corpus named, or a corpus whose content hash differs from the
            one recorded (its labels would not be those the run was scored against).
    """
    from safescale.corpora.loader import load_corpus

    run_dir = Path(run_dir)
    refs = _corpus_refs(read_manifest(run_dir), run_dir)
    if not refs:
        raise RunDirError(
            f"{run_dir}: neither manifest.json nor config.yaml names a corpus "
            "(manifest keys 'corpus' or 'corpora')"
        )
    corpora: dict[str, Corpus] = {}
    for ref in refs:
        path = ref.get("path")
        source = path if path and Path(path).is_dir() else ref.get("name")
        if not source:
            raise RunDirError(f"{run_dir / MANIFEST_FILE}: corpus entry {ref} has no name or path")
        corpus = load_corpus(source)
        expected = ref.get("content_hash")
        if expected and corpus.content_hash != expected:
            raise RunDirError(
                f"corpus {corpus.name!r} has content hash {corpus.content_hash[:12]}…, but the "
                f"run was made with {str(expected)[:12]}…; metrics would use other labels"
            )
        corpora[corpus.name] = corpus
    return corpora


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
        manifest: parsed ``manifest.json`` ({} when absent).
        responses: validated, de-duplicated responses.
        corpora: corpora by name.
        attribution: failure attributions (may be empty).
        triage: ``detection/triage.json`` contents, or None.
        notes: human-readable notes (ignored truncated lines, dropped duplicates).
    """

    run_dir: Path
    manifest: dict[str, Any]
    responses: list[ResponseRecord]
    corpora: dict[str, Corpus]
    attribution: list[AttributionRow] = field(default_factory=list)
    triage: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)


def load_run(run_dir: str | Path) -> RunData:
    """Load a run directory's responses, corpora, attributions and triage results.

    Raises:
        RunDirError: missing responses, corrupt lines, unknown items or corpus drift.
    """
    run_dir = Path(run_dir)
    responses, contents = load_responses(run_dir)
    notes = []
    if contents.truncated_line is not None:
        notes.append(
            f"{contents.path}:{contents.truncated_line}: truncated last line ignored "
            "(an interrupted write)"
        )
    dropped = len(contents.rows) - len(responses)
    if dropped:
        notes.append(f"{contents.path}: {dropped} duplicated response(s) dropped (last kept)")
    corpora = load_run_corpora(run_dir)
    owner = item_corpus_map(corpora)
    unknown = sorted({r.item for r in responses} - owner.keys())
    if unknown:
        raise RunDirError(
            f"{contents.path}: {len(unknown)} item(s) not in the run's corpora "
            f"{sorted(corpora)}: {unknown[:5]}"
        )
    attribution_path = run_dir / ATTRIBUTION_FILE
    attribution = load_attribution(run_dir)
    if attribution_path.is_file():
        tail = read_jsonl(attribution_path).truncated_line
        if tail is not None:
            notes.append(f"{attribution_path}:{tail}: truncated last line ignored")
    return RunData(
        run_dir=run_dir,
        manifest=read_manifest(run_dir),
        responses=responses,
        corpora=corpora,
        attribution=attribution,
        triage=load_triage(run_dir),
        notes=notes,
    )


def records_frame(records: Iterable[BaseModel], *, exclude: Sequence[str] = ()) -> pd.DataFrame:
    """A DataFrame with one row per record (pydantic ``model_dump``; nested values kept
    as Python objects), minus the ``exclude``d columns."""
    rows = [r.model_dump(exclude=set(exclude)) for r in records]
    return pd.DataFrame(rows)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (readers see
    the old or the new file, never a partial one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
