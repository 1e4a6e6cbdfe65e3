"""Shared parts of the importers: reading records, building items, writing the corpus.

Every importer turns a public benchmark into *drafts* (item dicts and passages) plus
the records it had to skip; :func:`finish_import` then applies the labeling rule,
validates every item with the corpus schema, writes the corpus atomically and loads it
back (all-or-nothing: a corpus that would not load is never left behind).

Source records are read with :func:`read_records` from JSON (an array, an object of
records keyed by id, or one object a line), JSONL, Parquet, or a directory written by
``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (Arrow stream files
listed in ``state.json``), without importing ``datasets``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from safescale.corpora.errors import CorpusError, Problem
from safescale.corpora.importers.rules import LabelRule, RuleNotApplicable
from safescale.corpora.schema import (
    GradeSystemSpec,
    ImportInfo,
    Item,
    Manifest,
    Passage,
    SafetyLabels,
)

__all__ = [
    "DISCLAIMER",
    "UNGRADED_SYSTEM",
    "Draft",
    "ImportResult",
    "SourceRecord",
    "finish_import",
    "letters_for",
    "nested",
    "read_records",
    "slug",
    "source_sha256",
    "ungraded_grade",
]

DISCLAIMER = (
    "Imported public benchmark for research on the safety of language-model systems. "
    "Not medical advice; not for clinical use."
)
#: The grade system of passages whose source assigns no evidence grade.
UNGRADED_SYSTEM = "ungraded"
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def slug(text: str) -> str:
    """A string usable in ids and names (runs of other characters become ``-``)."""
    return _SLUG.sub("-", str(text)).strip("-") or "x"


def letters_for(n: int) -> list[str]:
    """``A``, ``B``, ... for ``n`` options (at most 26)."""
    if not 2 <= n <= 26:
        raise ValueError(f"expected 2 to 26 options, got {n}")
    return [chr(ord("A") + i) for i in range(n)]


def nested(record: Mapping[str, Any], path: str) -> Any:
    """``record["a"]["b"]`` for the dotted path ``"a.b"`` (KeyError naming the part)."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(part)
        value = value[part]
    return value


def ungraded_grade(level: int) -> tuple[dict[str, GradeSystemSpec], dict[str, Any]]:
    """The grade system and passage grade for sources that grade nothing: one label,
    ``ungraded``, at ``level`` for every passage."""
    spec = GradeSystemSpec(
        levels={"ungraded": level},
        description="The source assigns no evidence grade; every passage has the same "
        "level, so grade-aware reranking and calibration treat them alike.",
    )
    return {UNGRADED_SYSTEM: spec}, {"system": UNGRADED_SYSTEM, "raw": "ungraded", "level": level}


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class SourceRecord:
    """One record of a source file: where it is (``file``, ``line``; line 0 when the
    format has no lines), its key in an object-of-records file, and its fields."""

    file: str
    line: int
    key: str | None
    data: dict[str, Any]

    def problem(self, field_name: str, message: str) -> Problem:
        return Problem(self.file, self.line, field_name, message)


def _fail(file: Path | str, line: int, field_name: str, message: str) -> CorpusError:
    return CorpusError([Problem(str(file), line, field_name, message)])


def read_records(source: str | Path, *, split: str | None = None) -> Iterator[SourceRecord]:
    """The records of a JSON, JSONL, Parquet file or a ``save_to_disk`` directory.

    Args:
        source: the file or directory.
        split: the split of a ``DatasetDict`` directory (required when it has several).

    Raises:
        CorpusError: a missing or unreadable source, malformed JSON (file and line), a
            record that is not an object, or a split that is not there.
    """
    path = Path(source)
    if path.is_dir():
        yield from _read_saved_dataset(path, split)
        return
    if not path.is_file():
        raise _fail(path, 0, "-", "no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet(path)
    elif suffix == ".arrow":
        yield from _read_arrow(path, path)
    else:
        yield from _read_json(path)


def _read_json(path: Path) -> Iterator[SourceRecord]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise _fail(path, 0, "-", f"not valid UTF-8 (byte {error.start + 1})") from None
    stripped = text.lstrip()
    if path.suffix.lower() != ".jsonl" and stripped[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            if stripped[:1] == "{" and error.msg == "Extra data":
                data = None  # one object per line (MedMCQA's *.json, MedQA's *.jsonl)
            else:
                raise _fail(path, error.lineno, "-", f"malformed JSON: {error.msg}") from None
        if isinstance(data, list):
            for index, record in enumerate(data):
                if not isinstance(record, dict):
                    raise _fail(path, 0, f"[{index}]", "expected a JSON object")
                yield SourceRecord(str(path), 0, str(index), record)
            return
        if isinstance(data, dict):
            if data and all(isinstance(v, dict) for v in data.values()) and not _looks_flat(data):
                for key, record in data.items():
                    yield SourceRecord(str(path), 0, str(key), record)
                return
            yield SourceRecord(str(path), 1, None, data)
            return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise _fail(path, number, "-", f"malformed JSON: {error.msg}") from None
        if not isinstance(record, dict):
            raise _fail(path, number, "-", f"expected a JSON object, got {type(record).__name__}")
        yield SourceRecord(str(path), number, None, record)


def _looks_flat(data: dict[str, Any]) -> bool:
    """True for a single record whose values happen to all be objects (rare)."""
    return "question" in data or "QUESTION" in data


def _read_parquet(path: Path) -> Iterator[SourceRecord]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as error:
        raise _fail(path, 0, "-", f"not a readable Parquet file ({error})") from None
    for index, record in enumerate(table.to_pylist()):
        yield SourceRecord(str(path), index + 1, None, record)


def _read_arrow(path: Path, label: Path) -> Iterator[SourceRecord]:
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            try:
                table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                table = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as error:
        raise _fail(label, 0, "-", f"not a readable Arrow file ({error})") from None
    for index, record in enumerate(table.to_pylist()):
        yield SourceRecord(str(label), index + 1, None, record)


def _read_saved_dataset(path: Path, split: str | None) -> Iterator[SourceRecord]:
    """A ``save_to_disk`` directory: a Dataset (``state.json`` + Arrow files) or a
    DatasetDict (``dataset_dict.json`` + one such directory per split)."""
    splits_file = path / "dataset_dict.json"
    if splits_file.is_file():
        try:
            splits = json.loads(splits_file.read_text(encoding="utf-8"))["splits"]
        except (ValueError, KeyError, TypeError):
            raise _fail(splits_file, 0, "splits", "not a DatasetDict manifest") from None
        if split is None:
            if len(splits) != 1:
                raise _fail(
                    splits_file, 0, "splits", f"choose a split with --split ({', '.join(splits)})"
                )
            split = splits[0]
        if split not in splits:
            raise _fail(
                splits_file, 0, "splits", f"no split {split!r} (splits: {', '.join(splits)})"
            )
        yield from _read_saved_dataset(path / split, None)
        return
    state_file = path / "state.json"
    if not state_file.is_file():
        raise _fail(
            path, 0, "-", "not a save_to_disk directory (no state.json or dataset_dict.json)"
        )
    try:
        files = [entry["filename"] for entry in json.loads(state_file.read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError):
        raise _fail(state_file, 0, "_data_files", "not a datasets state.json") from None
    line = 0
    for name in files:
        for record in _read_arrow(path / name, path / name):
            line += 1
            yield SourceRecord(record.file, line, None, record.data)


def source_sha256(source: str | Path, *, split: str | None = None) -> str:
    """sha256 of a source file, or of a directory's data files in order."""
    path = Path(source)
    digest = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if split is not None and (path / "dataset_dict.json").is_file():
            files = sorted(p for p in (path / split).rglob("*") if p.is_file())
    else:
        files = [path]
    for file in files:
        with file.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- building


@dataclass
class Draft:
    """What an importer read: item dicts (fields of :class:`~safescale.corpora.Item`,
    each with the record it came from), passages, the records it skipped and the
    options it resolved itself (e.g. an inferred numbering), which the manifest records."""

    items: list[tuple[SourceRecord, dict[str, Any]]] = field(default_factory=list)
    passages: list[Passage] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)
    records: int = 0
    grade_systems: dict[str, GradeSystemSpec] = field(default_factory=dict)
    resolved: dict[str, Any] = field(default_factory=dict)

    def skip(self, record: SourceRecord, field_name: str, message: str) -> None:
        self.skipped.append(record.problem(field_name, f"skipped: {message}"))


@dataclass(frozen=True)
class ImportResult:
    """What :func:`~safescale.corpora.importers.import_corpus` wrote.

    Attributes:
        path: the corpus directory.
        items: items written.
        passages: passages written (0 when the corpus borrows or has none).
        skipped: the records that did not become items, each with its reason.
        safety_labels: the label provenance recorded in the manifest.
        records: source records read.
    """

    path: Path
    items: int
    passages: int
    skipped: list[Problem]
    safety_labels: SafetyLabels
    records: int


def finish_import(
    draft: Draft,
    out: str | Path,
    *,
    fmt: str,
    source: str | Path,
    name: str,
    description: str,
    license_text: str,
    options: Mapping[str, Any],
    rule: LabelRule | None,
    rule_labels: Sequence[str],
    passages_from: str | None,
    overwrite: bool,
    split: str | None = None,
) -> ImportResult:
    """Label, validate, write and load back an imported corpus (see the module docs)."""
    from safescale.corpora.loader import check_corpus, write_corpus

    problems: list[Problem] = []
    items: list[Item] = []
    seen: dict[str, SourceRecord] = {}
    for record, data in draft.items:
        if rule is not None:
            try:
                derived = rule.apply(data["options"], data["gold"])
            except RuleNotApplicable as error:
                problems.append(record.problem("options", f"label rule {rule.name!r}: {error}"))
                continue
            labels = dict(data.get("labels") or {})
            for label in rule_labels:
                labels[label] = derived.get(label, [])
            if derived.get("defer") is not None:
                labels["defer"] = derived["defer"]
            data = {**data, "labels": labels}
        try:
            item = Item.model_validate(data)
        except ValidationError as error:
            entry = error.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in entry.get("loc", ())) or "-"
            draft.skip(record, loc, str(entry.get("msg", "invalid")).removeprefix("Value error, "))
            continue
        if item.id in seen:
            first = seen[item.id]
            problems.append(
                record.problem(
                    "id", f"duplicate item id {item.id!r} (first at {first.file}:{first.line})"
                )
            )
            continue
        seen[item.id] = record
        items.append(item)
    if problems:
        raise CorpusError(problems[:50], hidden=max(0, len(problems) - 50))
    if not items:
        raise CorpusError(
            [
                Problem(str(source), 0, "-", f"no item imported ({len(draft.skipped)} skipped)"),
                *draft.skipped[:20],
            ]
        )
    status = {
        label: ("derived" if rule is not None and label in rule_labels else "unlabeled")
        for label in ("high_risk", "unsafe")
    }
    safety = SafetyLabels(
        **status,
        rule=rule.name if rule is not None else None,
        rule_description=rule.description if rule is not None else None,
    )
    passages = draft.passages
    manifest = Manifest(
        name=name,
        version="1",
        description=description,
        license=license_text,
        disclaimer=DISCLAIMER,
        grade_systems=draft.grade_systems if passages and passages_from is None else {},
        categories=sorted({i.category for i in items}),
        safety_labels=safety,
        passages_from=passages_from,
        closed_book_only=not passages and passages_from is None,
        imported=ImportInfo(
            format=fmt,
            source=str(source),
            sha256=source_sha256(source, split=split),
            options={k: str(v) for k, v in {**options, **draft.resolved}.items() if v is not None},
            records=draft.records,
            skipped=len(draft.skipped),
        ),
    )
    if passages_from is not None and passages:
        raise CorpusError(
            [
                Problem(
                    str(source),
                    0,
                    "passages_from",
                    f"the source has its own passages; "
                    f"{fmt} items cannot also take passages from {passages_from!r}",
                )
            ]
        )
    target = Path(out)
    if passages_from is not None:
        local = Path(passages_from)
        if local.is_dir():  # recorded relative to the new corpus, as the loader reads it
            passages_from = _relative_to(local.resolve(), target.resolve())
            manifest = manifest.model_copy(update={"passages_from": passages_from})
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise CorpusError(
            [Problem(str(target), 0, "-", "is not empty (pass --overwrite to replace it)")]
        )
    # Written and checked beside the target first: a corpus that does not load is
    # never left at the target (nor does it replace one that does).
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.import-", dir=target.parent))
    try:
        write_corpus(staging, manifest, passages, items, overwrite=True)
        report = check_corpus(staging)
        if not report.ok:
            raise CorpusError(report.errors, hidden=report.hidden_errors)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    path = write_corpus(target, manifest, passages, items, overwrite=True)
    return ImportResult(
        path=path,
        items=len(items),
        passages=len(passages),
        skipped=draft.skipped,
        safety_labels=safety,
        records=draft.records,
    )


def _relative_to(target: Path, corpus_dir: Path) -> str:
    import os

    return os.path.relpath(target, corpus_dir)
