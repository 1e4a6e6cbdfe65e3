"""The core data model: graded passages, benchmark items and corpus manifests.

Every record a user writes by hand (one JSON object per line in ``passages.jsonl`` /
``items.jsonl``) is parsed into these pydantic models. Unknown keys are rejected
(``extra="forbid"``) so that a typo is reported instead of silently dropped.
"""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from safescale.corpora.grades import UnknownGradeSystemError, builtin_grade_system

__all__ = [
    "SCHEMA_VERSION",
    "EvidenceSets",
    "GeneratorInfo",
    "Grade",
    "GradeSystemSpec",
    "Item",
    "Manifest",
    "OptionLabels",
    "Passage",
    "Source",
    "Stance",
    "Status",
    "Task",
]

SCHEMA_VERSION = 1

_LETTER = re.compile(r"[A-Z]")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Status(StrEnum):
    """Lifecycle of a guideline passage."""

    CURRENT = "current"
    SUPERSEDED = "superseded"
    WITHDRAWN = "withdrawn"


class Stance(StrEnum):
    """How a passage relates to one option of one item."""

    SUPPORTS = "supports"
    CONTRADICTS = "contradicts"
    NEUTRAL = "neutral"


class Task(StrEnum):
    """Evidence relation of an item (RETINA-SAFE taxonomy)."""

    ALIGN = "align"
    CONFLICT = "conflict"
    GAP = "gap"


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class Source(_Record):
    """Where a passage comes from.

    ``date`` is a calendar date written ``YYYY-MM-DD``. A year or year-month alone is
    rejected rather than padded to a day that the source never gave; put the partial
    date in ``version`` (e.g. ``"2024"``) instead.
    """

    org: str = Field(min_length=1)
    title: str = Field(min_length=1)
    version: str | None = None
    date: dt.date | None = None
    url: str | None = None

    @field_validator("date", mode="before")
    @classmethod
    def _date_is_iso_day(cls, value: object) -> object:
        if value is None or isinstance(value, dt.date):
            return value
        text = str(value).strip()
        if isinstance(value, str) and _ISO_DATE.fullmatch(text):
            return text
        raise ValueError(
            f"expected a date as YYYY-MM-DD (e.g. 2017-07-01), got {value!r}; "
            "for a year or month only, leave date out and give it in source.version"
        )


class Grade(_Record):
    """An evidence grade: the raw label in its own system plus a normalized level.

    ``level`` runs from 1 (strongest: high-certainty evidence, strong recommendation)
    to 4 (weakest: expert opinion / very low certainty). When a passage is loaded
    through :func:`safescale.corpora.load_corpus`, the level is (re)derived from the
    corpus manifest's grade-system mapping; a level written in the file that disagrees
    with the mapping is a validation error.
    """

    system: str = Field(min_length=1)
    raw: str = Field(min_length=1)
    level: int = Field(ge=1, le=4)


class Passage(_Record):
    """One unit of evidence in the store."""

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    source: Source
    grade: Grade
    status: Status = Status.CURRENT
    supersedes: list[str] = Field(default_factory=list)
    topic: str = Field(min_length=1)
    scope: str | None = None

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is empty")
        return value


class OptionLabels(_Record):
    """Safety labels on the options of one item (letters refer to ``Item.options``)."""

    high_risk: list[str] = Field(default_factory=list)
    unsafe: list[str] = Field(default_factory=list)
    defer: str | None = None


class EvidenceSets(_Record):
    """Oracle evidence sets of an item (passage ids). ``none`` is implicit: no ids."""

    clean: list[str] = Field(default_factory=list)
    conflict: list[str] = Field(default_factory=list)


class Item(_Record):
    """One multiple-choice benchmark item.

    ``question`` is the stem only; the options live in ``options`` (letter -> text,
    single capital letters in display order). ``stance`` maps passage id -> option
    letter -> stance, for the passages a benchmark labels (at least those of the
    evidence sets). ``scope`` optionally names the clinical setting the question is
    asked in (e.g. ``incidental`` vs ``screening``) so that a retrieval policy can
    filter passages by their own ``scope``.
    """

    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    options: dict[str, str] = Field(min_length=2)
    gold: str
    labels: OptionLabels = Field(default_factory=OptionLabels)
    category: str = Field(min_length=1)
    evidence_id: str = Field(min_length=1)
    task: Task | None = None
    evidence: EvidenceSets = Field(default_factory=EvidenceSets)
    stance: dict[str, dict[str, Stance]] = Field(default_factory=dict)
    context: str | None = None
    scope: str | None = None

    @field_validator("options")
    @classmethod
    def _options_well_formed(cls, options: dict[str, str]) -> dict[str, str]:
        bad = [letter for letter in options if not _LETTER.fullmatch(letter)]
        if bad:
            raise ValueError(f"option letters must be single capital letters, got {bad}")
        empty = [letter for letter, text in options.items() if not text.strip()]
        if empty:
            raise ValueError(f"option(s) {empty} have empty text")
        texts = [text.strip().lower() for text in options.values()]
        if len(set(texts)) != len(texts):
            raise ValueError("options are not distinct")
        return options

    @field_validator("gold")
    @classmethod
    def _gold_among_options(cls, gold: str, info: ValidationInfo) -> str:
        letters = info.data.get("options")
        if letters is not None and gold not in letters:
            raise ValueError(f"gold {gold!r} is not among options {sorted(letters)}")
        return gold

    @field_validator("labels")
    @classmethod
    def _labels_on_known_letters(cls, labels: OptionLabels, info: ValidationInfo) -> OptionLabels:
        letters = info.data.get("options")
        if letters is None:
            return labels
        for name in ("high_risk", "unsafe"):
            unknown = set(getattr(labels, name)) - set(letters)
            if unknown:
                raise ValueError(f"labels.{name} names unknown option(s) {sorted(unknown)}")
        if labels.defer is not None and labels.defer not in letters:
            raise ValueError(f"labels.defer names unknown option {labels.defer!r}")
        return labels

    @field_validator("stance")
    @classmethod
    def _stance_on_known_letters(
        cls, stance: dict[str, dict[str, Stance]], info: ValidationInfo
    ) -> dict[str, dict[str, Stance]]:
        letters = info.data.get("options")
        if letters is None:
            return stance
        for pid, by_letter in stance.items():
            unknown = set(by_letter) - set(letters)
            if unknown:
                raise ValueError(f"stance[{pid}] names unknown option(s) {sorted(unknown)}")
        return stance

    @property
    def letters(self) -> list[str]:
        """Option letters in their written order."""
        return list(self.options)

    @property
    def evidence_ids(self) -> list[str]:
        """Passage ids of the clean and conflict sets, each once, clean first."""
        return list(dict.fromkeys([*self.evidence.clean, *self.evidence.conflict]))


class GradeSystemSpec(_Record):
    """A grade system declared in a corpus manifest: raw label -> normalized level.

    ``builtin`` names one of the systems safescale knows (see
    :mod:`safescale.corpora.grades`); ``levels`` adds or overrides labels. At least one
    of them must be given.
    """

    builtin: str | None = None
    levels: dict[str, int] = Field(default_factory=dict)
    description: str | None = None

    @field_validator("builtin")
    @classmethod
    def _builtin_known(cls, name: str | None) -> str | None:
        if name is not None:
            try:
                builtin_grade_system(name)
            except UnknownGradeSystemError as error:
                raise ValueError(str(error)) from None
        return name

    @field_validator("levels")
    @classmethod
    def _levels_in_range(cls, levels: dict[str, int]) -> dict[str, int]:
        bad = {label: level for label, level in levels.items() if not 1 <= level <= 4}
        if bad:
            raise ValueError(f"levels must be 1..4, got {bad}")
        return levels

    @model_validator(mode="after")
    def _has_mapping(self) -> GradeSystemSpec:
        if self.builtin is None and not self.levels:
            raise ValueError("a grade system needs a builtin system or a levels table")
        return self


class GeneratorInfo(_Record):
    """How a generated corpus was made (so that it can be regenerated exactly)."""

    name: str = Field(min_length=1)
    seed: int
    n: int | None = None


class Manifest(_Record):
    """``corpus.yaml``: what a corpus is and how its grades normalize."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str = Field(min_length=1)
    license: str = Field(min_length=1)
    disclaimer: str = Field(min_length=1)
    grade_systems: dict[str, GradeSystemSpec] = Field(min_length=1)
    schema_version: Literal[1] = SCHEMA_VERSION
    categories: list[str] = Field(default_factory=list)
    generator: GeneratorInfo | None = None
