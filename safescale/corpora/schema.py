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
    "ImportInfo",
    "Item",
    "LabelStatus",
    "Manifest",
    "OptionLabels",
    "Passage",
    "SafetyLabels",
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


#: Where an item set's option-level safety labels come from: written with the items
#: (``labeled``), derived at import by a named rule (``derived``), or absent
#: (``unlabeled``: the rates that need them are reported as "not labeled").
LabelStatus = Literal["labeled", "derived", "unlabeled"]


class SafetyLabels(_Record):
    """``safety_labels`` in ``corpus.yaml``: the provenance of the items' ``high_risk``
    and ``unsafe`` labels.

    A corpus without this section is read as ``labeled`` for a label that at least one
    item carries and ``unlabeled`` for one that no item carries (see
    :attr:`safescale.corpora.corpus.Corpus.safety_labels`).

    Attributes:
        high_risk: provenance of ``labels.high_risk``.
        unsafe: provenance of ``labels.unsafe``.
        rule: the named rule that derived the ``derived`` labels.
        rule_description: what that rule does, in words.
    """

    high_risk: LabelStatus = "labeled"
    unsafe: LabelStatus = "labeled"
    rule: str | None = None
    rule_description: str | None = None

    @model_validator(mode="after")
    def _rule_iff_derived(self) -> SafetyLabels:
        derived = [n for n in ("high_risk", "unsafe") if getattr(self, n) == "derived"]
        if derived and not self.rule:
            raise ValueError(f"{', '.join(derived)} derived but no rule named")
        if self.rule and not derived:
            raise ValueError(f"rule {self.rule!r} named but no label is 'derived'")
        return self

    def status(self, label: str) -> LabelStatus:
        """The provenance of ``high_risk`` or ``unsafe``."""
        return getattr(self, label)

    def is_labeled(self, label: str) -> bool:
        """True when the label is written or derived (its rate means something)."""
        return self.status(label) != "unlabeled"


class ImportInfo(_Record):
    """How an imported corpus was made (``safescale corpus import``).

    Attributes:
        format: the importer (``pubmedqa``, ``medqa``, ``medmcqa``, ``mirage``, ``hf``).
        source: the file or directory read (as given).
        sha256: sha256 of the source file (of its data files, in order, for a directory).
        options: the importer options in effect (as strings).
        records: records read; ``skipped`` of them did not become items.
        skipped: records skipped (each reason is printed by the import).
    """

    format: str = Field(min_length=1)
    source: str = Field(min_length=1)
    sha256: str
    options: dict[str, str] = Field(default_factory=dict)
    records: int = 0
    skipped: int = 0


class Manifest(_Record):
    """``corpus.yaml``: what a corpus is and how its grades normalize.

    ``passages_from`` names another corpus (bundled name, or a directory, relative to
    this corpus's directory or absolute) whose passages this corpus's items are
    answered over; such a corpus has no ``passages.jsonl`` of its own. A corpus with
    ``closed_book_only: true`` has no passages at all (its items run under the
    conditions that need no store). Either way ``grade_systems`` may be empty.
    """

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    description: str = Field(min_length=1)
    license: str = Field(min_length=1)
    disclaimer: str = Field(min_length=1)
    grade_systems: dict[str, GradeSystemSpec] = Field(default_factory=dict)
    schema_version: Literal[1] = SCHEMA_VERSION
    categories: list[str] = Field(default_factory=list)
    generator: GeneratorInfo | None = None
    safety_labels: SafetyLabels | None = None
    passages_from: str | None = Field(None, min_length=1)
    closed_book_only: bool = False
    imported: ImportInfo | None = None

    @model_validator(mode="after")
    def _passage_source(self) -> Manifest:
        if self.passages_from is not None and self.closed_book_only:
            raise ValueError("give passages_from or closed_book_only, not both")
        if not self.grade_systems and self.own_passages:
            raise ValueError(
                "grade_systems: a corpus with its own passages needs at least one grade system"
            )
        return self

    def dump(self) -> dict:
        """The manifest as JSON-ready data, without the optional sections left at their
        defaults (so a corpus written before they existed dumps, and hashes, as then)."""
        data = self.model_dump(mode="json")
        for key, default in _LATER_DEFAULTS.items():
            if key in data and data[key] == default:
                del data[key]
        return data

    @property
    def own_passages(self) -> bool:
        """True when the corpus keeps its passages in its own ``passages.jsonl``."""
        return self.passages_from is None and not self.closed_book_only


#: Manifest keys added after schema version 1 and their defaults (left out of dumps).
_LATER_DEFAULTS: dict[str, object] = {
    "safety_labels": None,
    "passages_from": None,
    "closed_book_only": False,
    "imported": None,
}
