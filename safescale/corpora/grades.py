"""Evidence-grade systems and their normalization to one level, 1 (strongest) .. 4 (weakest).

Every passage keeps its raw grade label in its own system; :func:`normalize_grade` maps
the label to the shared level that the retrieval ranking, the agents' critique step and
the evidence-calibrated softmax use. The built-in mappings:

==================  ===========================================  =======================
system              raw labels                                   level
==================  ===========================================  =======================
``GRADE``           certainty high / moderate / low / very low   1 / 2 / 3 / 4
                    (strength words and ⊕ symbols are accepted;
                    the certainty decides the level)
``CEBM-2011``       Oxford CEBM levels 1 .. 5 (2009-style 1a ..  1 / 2 / 3 / 4 / 4
                    5 accepted, the letter is ignored)
``ACCP``            1A, 1B, 2A, 1C, 2B, 2C                       1, 2, 2, 3, 3, 4
``ACR-AC``          strength of evidence strong / good /         1 / 2 / 3 / 4
                    limited / expert opinion; without it the
                    appropriateness rating decides: usually
                    appropriate (7-9) and usually not
                    appropriate (1-3) -> 2, may be appropriate
                    (4-6) -> 3
``ADA``             A / B / C / E                                1 / 2 / 3 / 4
``LEVEL``           Level I / II (II-1..II-3) / III / IV         1 / 2 / 3 / 4
``AAO-PPP``         I++, I+ / I-, II++, II+ / II- / III          1 / 2 / 3 / 4
==================  ===========================================  =======================

A corpus manifest may declare its own system (a plain ``levels`` table) or extend a
built-in one; an unknown label is an error naming the label and the system.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "BUILTIN_GRADE_SYSTEMS",
    "GradeSystem",
    "UnknownGradeError",
    "UnknownGradeSystemError",
    "builtin_grade_system",
    "normalize_grade",
    "resolve_level",
]


class UnknownGradeError(ValueError):
    """A raw grade label that its system does not define."""

    def __init__(self, system: str, raw: str) -> None:
        self.system = system
        self.raw = raw
        super().__init__(f"unknown grade label {raw!r} in grade system {system!r}")


class UnknownGradeSystemError(KeyError):
    """A grade-system name that safescale does not know."""

    def __init__(self, name: str) -> None:
        self.name = name
        known = ", ".join(sorted(BUILTIN_GRADE_SYSTEMS))
        super().__init__(f"unknown grade system {name!r} (built-in systems: {known})")

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class GradeSystem:
    """A built-in grade system.

    Attributes:
        name: canonical name (``GRADE``, ``ACCP``, ...).
        title: human-readable title.
        parse: maps a raw label to a level, or ``None`` if the label is not valid.
        examples: canonical labels and their levels (written into generated manifests).
        aliases: other spellings of the name that :func:`builtin_grade_system` accepts.
    """

    name: str
    title: str
    parse: Callable[[str], int | None]
    examples: Mapping[str, int]
    aliases: tuple[str, ...] = field(default=())

    def level(self, raw: str) -> int:
        """The normalized level of ``raw`` (UnknownGradeError if the label is invalid)."""
        level = self.parse(raw)
        if level is None:
            raise UnknownGradeError(self.name, raw)
        return level


def _clean(raw: str) -> str:
    return " ".join(raw.strip().lower().replace("_", " ").split())


_GRADE_WORDS = frozenset(
    {
        "strong", "conditional", "weak", "discretionary", "recommendation", "recommend",
        "for", "against", "certainty", "quality", "evidence", "of", "in", "the", "grade",
        "rating",
    }
)  # fmt: skip
_GRADE_CERTAINTY = {"high": 1, "moderate": 2, "low": 3}


def _parse_grade(raw: str) -> int | None:
    text = _clean(raw)
    symbols = text.count("⊕")
    if symbols:
        rest = text.replace("⊕", "").replace("○", "").replace("◯", "").strip()
        return 5 - symbols if 1 <= symbols <= 4 and not rest else None
    tokens = re.findall(r"[a-z]+|[^\sa-z]", text)
    levels: set[int] = set()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "very" and index + 1 < len(tokens) and tokens[index + 1] == "low":
            levels.add(4)
            index += 2
            continue
        if token in _GRADE_CERTAINTY:
            levels.add(_GRADE_CERTAINTY[token])
        elif token not in _GRADE_WORDS and token not in {",", ";", "/", "-", "(", ")", ":"}:
            return None
        index += 1
    return levels.pop() if len(levels) == 1 else None


def _parse_cebm(raw: str) -> int | None:
    match = re.fullmatch(r"(?:(?:oxford\s+)?(?:cebm\s+)?level\s*)?([1-5])\s*([abc])?", _clean(raw))
    return min(int(match.group(1)), 4) if match else None


_ACCP = {"1a": 1, "1b": 2, "2a": 2, "1c": 3, "2b": 3, "2c": 4}


def _parse_accp(raw: str) -> int | None:
    match = re.fullmatch(r"(?:grade\s*)?([12])\s*([abc])", _clean(raw))
    return _ACCP[match.group(1) + match.group(2)] if match else None


_ACR_CATEGORY = {
    "usually appropriate": range(7, 10),
    "may be appropriate": range(4, 7),
    "usually not appropriate": range(1, 4),
}
_ACR_EVIDENCE = {"strong": 1, "good": 2, "limited": 3, "expert opinion": 4, "expert consensus": 4}


def _parse_acr(raw: str) -> int | None:
    text = _clean(raw)
    evidence_level: int | None = None
    for label, level in _ACR_EVIDENCE.items():
        pattern = rf"[;,]?\s*(?:strength of evidence\s*:?\s*)?{label}(?:\s+evidence)?\s*$"
        match = re.search(pattern, text)
        if match:
            evidence_level = level
            text = text[: match.start()].strip()
            break
    if not text:
        return evidence_level
    match = re.fullmatch(
        r"(usually appropriate|may be appropriate|usually not appropriate)?"
        r"(?:\s*\(?\s*(?:rating\s*)?([1-9])\s*\)?)?(?:\s*\(disagreement\))?",
        text,
    )
    if not match or not (match.group(1) or match.group(2)):
        return None
    category, rating = match.group(1), match.group(2)
    if category and rating and int(rating) not in _ACR_CATEGORY[category]:
        return None
    if evidence_level is not None:
        return evidence_level
    if category is None:
        category = next(c for c, span in _ACR_CATEGORY.items() if int(rating) in span)
    return 3 if category == "may be appropriate" else 2


_ADA = {"a": 1, "b": 2, "c": 3, "e": 4}


def _parse_ada(raw: str) -> int | None:
    match = re.fullmatch(r"(?:(?:evidence\s+)?(?:level|grade)\s*)?([abce])", _clean(raw))
    return _ADA[match.group(1)] if match else None


_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "1": 1, "2": 2, "3": 3, "4": 4}


def _parse_roman(raw: str) -> int | None:
    match = re.fullmatch(r"(?:level\s*)?(iv|iii|ii|i|[1-4])(?:\s*-\s*([1-3]))?", _clean(raw))
    if not match:
        return None
    if match.group(2) and match.group(1) not in {"ii", "2"}:
        return None
    return _ROMAN[match.group(1)]


_AAO = {"i++": 1, "i+": 1, "i-": 2, "ii++": 2, "ii+": 2, "ii-": 3, "iii": 4}


def _parse_aao(raw: str) -> int | None:
    text = _clean(raw)
    text = re.sub(r"[,;]\s*(good|insufficient)(\s+quality)?", "", text)
    text = re.sub(r"[,;]\s*(strong|discretionary)(\s+recommendation)?", "", text)
    return _AAO.get(text.strip())


BUILTIN_GRADE_SYSTEMS: dict[str, GradeSystem] = {
    system.name: system
    for system in (
        GradeSystem(
            "GRADE",
            "GRADE certainty of evidence",
            _parse_grade,
            {"high": 1, "moderate": 2, "low": 3, "very low": 4},
        ),
        GradeSystem(
            "CEBM-2011",
            "Oxford CEBM 2011 levels of evidence",
            _parse_cebm,
            {"1": 1, "2": 2, "3": 3, "4": 4, "5": 4},
            aliases=("oxford cebm 2011", "oxford cebm", "cebm", "oxford"),
        ),
        GradeSystem(
            "ACCP",
            "ACCP grades of recommendation (strength 1-2, quality A-C)",
            _parse_accp,
            {k.upper(): v for k, v in _ACCP.items()},
        ),
        GradeSystem(
            "ACR-AC",
            "ACR Appropriateness Criteria (rating 1-9, strength of evidence)",
            _parse_acr,
            {
                "usually appropriate": 2,
                "may be appropriate": 3,
                "usually not appropriate": 2,
                "strong": 1,
                "good": 2,
                "limited": 3,
                "expert opinion": 4,
            },
            aliases=("acr", "acr appropriateness", "acr appropriateness criteria"),
        ),
        GradeSystem(
            "ADA",
            "ADA levels of evidence",
            _parse_ada,
            {"A": 1, "B": 2, "C": 3, "E": 4},
        ),
        GradeSystem(
            "LEVEL",
            "Levels of evidence I-IV",
            _parse_roman,
            {"Level I": 1, "Level II": 2, "Level III": 3, "Level IV": 4},
            aliases=("level i-iv", "levels", "level i iv", "roman"),
        ),
        GradeSystem(
            "AAO-PPP",
            "AAO Preferred Practice Pattern evidence ratings",
            _parse_aao,
            {k.upper(): v for k, v in _AAO.items()},
            aliases=("aao", "aao ppp"),
        ),
    )
}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", name.lower())


_ALIASES = {
    _key(alias): system.name
    for system in BUILTIN_GRADE_SYSTEMS.values()
    for alias in (system.name, *system.aliases)
}


def builtin_grade_system(name: str) -> GradeSystem:
    """The built-in system called ``name`` (case and punctuation are ignored).

    Raises:
        UnknownGradeSystemError: no built-in system has that name or alias.
    """
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        raise UnknownGradeSystemError(name)
    return BUILTIN_GRADE_SYSTEMS[canonical]


def normalize_grade(system: str, raw: str) -> int:
    """The normalized level (1 strongest .. 4 weakest) of ``raw`` in a built-in system.

    Raises:
        UnknownGradeSystemError: ``system`` is not a built-in system.
        UnknownGradeError: ``raw`` is not a label of that system.
    """
    return builtin_grade_system(system).level(raw)


def resolve_level(system: str, raw: str, levels: Mapping[str, int], builtin: str | None) -> int:
    """The level of ``raw`` under a manifest-declared system.

    The manifest's explicit ``levels`` table wins (exact label, then case-insensitive);
    otherwise the built-in system named by ``builtin`` decides.

    Args:
        system: the system's name in the manifest (used in error messages).
        raw: the raw label.
        levels: the manifest's label -> level table.
        builtin: name of the built-in system the manifest extends, if any.

    Raises:
        UnknownGradeError: the label is in neither table.
    """
    if raw in levels:
        return levels[raw]
    folded = _clean(raw)
    for label, level in levels.items():
        if _clean(label) == folded:
            return level
    if builtin is not None:
        level = builtin_grade_system(builtin).parse(raw)
        if level is not None:
            return level
    raise UnknownGradeError(system, raw)
