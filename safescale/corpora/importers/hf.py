"""Any Hugging Face ``datasets`` dataset (``save_to_disk`` directory, Parquet or JSONL)
with a column mapping.

The mapping says which column holds what (dotted paths reach into nested columns,
e.g. ``context.contexts``)::

    question: question          # required
    options: [opa, opb, opc, opd]   # one column per option, or one column holding a
                                # list of texts or an object letter -> text
    gold: cop                   # required
    gold_format: index0         # letter | text | index0 | index1 | auto (default)
    id: id                      # optional; default: the row number
    category: subject_name      # optional column; else category_value (default: name)
    category_value: medmcqa
    evidence_id: topic_name     # optional grouping column; default: the item id
    passages: context.contexts  # optional: a text or list of texts per row, which
                                # become passages and the item's clean evidence
    grade_level: 3              # level of the single 'ungraded' grade of passages

``gold_format: auto`` reads a single capital letter among the option letters as a
letter and a string equal to one option's text as that option; an integer gold needs an
explicit ``index0`` or ``index1``. Items are ``<name>-<id>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from safescale.corpora.errors import CorpusError, Problem
from safescale.corpora.importers._common import (
    Draft,
    SourceRecord,
    letters_for,
    nested,
    read_records,
    slug,
    ungraded_grade,
)
from safescale.corpora.schema import Passage

__all__ = ["ColumnMapping", "load_mapping", "read_hf"]


class ColumnMapping(BaseModel):
    """Which source column holds which item field (see the module docs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    question: str = Field(min_length=1)
    options: str | tuple[str, ...]
    gold: str = Field(min_length=1)
    gold_format: Literal["auto", "letter", "text", "index0", "index1"] = "auto"
    id: str | None = None
    category: str | None = None
    category_value: str | None = None
    evidence_id: str | None = None
    passages: str | None = None
    grade_level: int = Field(3, ge=1, le=4)

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> Any:
        if isinstance(value, str) and "," in value:
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, list):
            return tuple(value)
        return value


def load_mapping(
    path: str | Path | None = None, pairs: dict[str, str] | None = None
) -> ColumnMapping:
    """A mapping from a YAML file and/or ``key=column`` pairs (pairs win).

    Raises:
        CorpusError: an unreadable file, an unknown key or a missing required key,
            named with the file (or ``--map``) and the key.
    """
    data: dict[str, Any] = {}
    where = str(path) if path is not None else "--map"
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as error:
            raise CorpusError(
                [Problem(where, 0, "-", f"cannot read the mapping: {error}")]
            ) from None
        if not isinstance(loaded, dict):
            raise CorpusError([Problem(where, 1, "-", "the mapping must be a YAML mapping")])
        data.update(loaded)
    data.update(pairs or {})
    try:
        return ColumnMapping.model_validate(data)
    except ValidationError as error:
        problems = []
        for entry in error.errors(include_url=False):
            key = ".".join(str(p) for p in entry.get("loc", ())) or "-"
            message = str(entry.get("msg", "invalid"))
            if entry.get("type") == "extra_forbidden":
                message = f"unknown mapping key (known: {', '.join(ColumnMapping.model_fields)})"
            elif entry.get("type") == "missing":
                message = "required mapping key is missing"
            problems.append(Problem(where, 0, key, message))
        raise CorpusError(problems) from None


def _column(record: SourceRecord, column: str) -> Any:
    try:
        return nested(record.data, column)
    except KeyError:
        raise _RecordError(record.problem(column, "no such column in this record")) from None


class _RecordError(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


def _options(record: SourceRecord, mapping: ColumnMapping) -> dict[str, str]:
    if isinstance(mapping.options, tuple):
        texts = [_column(record, c) for c in mapping.options]
        column = ",".join(mapping.options)
    else:
        column = mapping.options
        value = _column(record, column)
        if isinstance(value, dict):
            if not all(isinstance(v, str) for v in value.values()):
                raise _RecordError(record.problem(column, "option texts must be strings"))
            return {str(k).strip(): v for k, v in sorted(value.items())}
        texts = value
    if not isinstance(texts, list | tuple) or not all(isinstance(t, str) for t in texts):
        raise _RecordError(record.problem(column, "expected option texts (strings)"))
    try:
        return dict(zip(letters_for(len(texts)), texts, strict=True))
    except ValueError as error:
        raise _RecordError(record.problem(column, str(error))) from None


def _gold(record: SourceRecord, mapping: ColumnMapping, options: dict[str, str]) -> str:
    value = _column(record, mapping.gold)
    letters = list(options)
    fmt = mapping.gold_format
    if fmt == "auto":
        if isinstance(value, str) and value.strip() in options:
            fmt = "letter"
        elif isinstance(value, str):
            fmt = "text"
        else:
            raise _RecordError(
                record.problem(
                    mapping.gold,
                    f"{value!r} is not a letter or an option text; "
                    "set gold_format to index0 or index1 for a numbered gold",
                )
            )
    if fmt == "letter":
        letter = str(value).strip()
        if letter not in options:
            raise _RecordError(record.problem(mapping.gold, f"{value!r} is not among {letters}"))
        return letter
    if fmt == "text":
        matches = [k for k, t in options.items() if t.strip() == str(value).strip()]
        if len(matches) != 1:
            raise _RecordError(
                record.problem(mapping.gold, f"{value!r:.60} matches {len(matches)} option texts")
            )
        return matches[0]
    try:
        index = int(value) - (1 if fmt == "index1" else 0)
    except (TypeError, ValueError):
        raise _RecordError(
            record.problem(mapping.gold, f"expected an integer, got {value!r}")
        ) from None
    if not 0 <= index < len(letters):
        raise _RecordError(record.problem(mapping.gold, f"{value!r} is out of range ({fmt})"))
    return letters[index]


def read_hf(
    source: str | Path,
    mapping: ColumnMapping,
    *,
    name: str,
    split: str | None = None,
) -> Draft:
    """Read any dataset through a column mapping (see the module docs).

    Raises:
        CorpusError: a column that is missing or holds the wrong kind of value (file,
            row, column).
    """
    grade_systems, grade = ungraded_grade(mapping.grade_level)
    draft = Draft(grade_systems=grade_systems)
    problems: list[Problem] = []
    prefix = slug(name)
    for row, record in enumerate(read_records(source, split=split)):
        draft.records += 1
        try:
            question = _column(record, mapping.question)
            if not isinstance(question, str):
                raise _RecordError(record.problem(mapping.question, "expected a string"))
            options = _options(record, mapping)
            gold = _gold(record, mapping, options)
            raw_id = _column(record, mapping.id) if mapping.id else (record.key or row)
            item_id = f"{prefix}-{slug(raw_id)}"
            if mapping.category:
                category = str(_column(record, mapping.category))
            else:
                category = mapping.category_value or prefix
            group = (
                f"{prefix}-{slug(_column(record, mapping.evidence_id))}"
                if mapping.evidence_id
                else item_id
            )
            texts: list[str] = []
            if mapping.passages:
                value = _column(record, mapping.passages)
                texts = [value] if isinstance(value, str) else value
                if not isinstance(texts, list | tuple) or not all(
                    isinstance(t, str) for t in texts
                ):
                    raise _RecordError(record.problem(mapping.passages, "expected text(s)"))
        except _RecordError as error:
            problems.append(error.problem)
            continue
        pids = []
        for index, text in enumerate(texts, start=1):
            if not text.strip():
                continue
            pid = f"{item_id}-p{index}"
            pids.append(pid)
            draft.passages.append(
                Passage(
                    id=pid,
                    text=text,
                    source={"org": name, "title": f"{item_id}, passage {index}"},
                    grade=grade,
                    topic=category or prefix,
                )
            )
        item: dict[str, Any] = {
            "id": item_id,
            "question": question,
            "options": options,
            "gold": gold,
            "category": category or prefix,
            "evidence_id": group,
        }
        if pids:
            item["evidence"] = {"clean": pids}
            item["stance"] = {pid: {gold: "supports"} for pid in pids}
        draft.items.append((record, item))
    if problems:
        raise CorpusError(problems[:50], hidden=max(0, len(problems) - 50))
    return draft
