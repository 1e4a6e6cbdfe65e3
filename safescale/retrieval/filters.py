"""Metadata filters and grade-aware reranking for evidence search.

Filters restrict which passages may be returned. They are applied *inside* the vector
search (as a FAISS ID selector), so a filtered search still returns ``k`` hits whenever
at least ``k`` passages pass the filter (see :meth:`EvidenceStore.search` for the
fallback policy).

Reranking re-orders the similarity candidates by a score that also rewards strong
evidence grades and recent sources:

    score = similarity
            + w_grade   * (4 - level) / 3
            + w_recency * 2 ** (-age_years / half_life_years)

where ``similarity`` is the cosine similarity of query and passage, ``level`` the
normalized grade (1 strongest .. 4 weakest, so the grade term runs from ``w_grade`` for
level 1 down to 0 for level 4), and ``age`` the time between the source date and the
store's reference date (the newest source date in the store, so scores do not drift
with the wall clock). Undated passages get no recency bonus.

The default weights (grade 0.06, recency 0.03, half-life 5 years) are deliberately
small: with MiniLM-like embeddings the top candidates for a query typically lie within
0.05 cosine of each other, so the bonuses break near-ties in favour of stronger and
newer evidence without letting a strong but off-topic passage overtake a relevant one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from safescale.corpora.schema import Passage, Status

__all__ = [
    "ALL_STATUSES",
    "RerankWeights",
    "SearchFilters",
    "allowed_statuses",
    "rerank_scores",
    "with_status_rule",
]

ALL_STATUSES: frozenset[Status] = frozenset(Status)


def _frozen_strings(values: Iterable[str] | str | None, name: str) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = (values,)
    result = frozenset(values)
    if not all(isinstance(v, str) for v in result):
        raise TypeError(f"{name} must be strings, got {sorted(map(repr, result))}")
    return result


@dataclass(frozen=True)
class SearchFilters:
    """Which passages a search may return. Every condition must hold (logical AND).

    Attributes:
        min_grade_level: keep passages whose normalized grade level is ``<=`` this value
            (1 = strongest evidence, 4 = weakest); ``2`` keeps levels 1 and 2. ``None``
            keeps every grade.
        statuses: statuses to keep; the default keeps all of them (current, superseded
            and withdrawn). A search applies this *and* its status rule (current only
            unless ``include_superseded`` / ``include_withdrawn``), so this field can
            only narrow what the flags allow. :meth:`current_only` is the preset for the
            agentic condition.
        topics: keep passages whose ``topic`` is one of these; ``None`` keeps all.
        scopes: keep passages whose ``scope`` is one of these (a passage without a
            scope never matches a scope filter); ``None`` keeps all.
        date_from: keep passages whose source date is on or after this date.
        date_to: keep passages whose source date is on or before this date. With
            either date bound set, undated passages are excluded.
    """

    min_grade_level: int | None = None
    statuses: frozenset[Status] = ALL_STATUSES
    topics: frozenset[str] | None = None
    scopes: frozenset[str] | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None

    def __post_init__(self) -> None:
        if self.min_grade_level is not None and not 1 <= int(self.min_grade_level) <= 4:
            raise ValueError(f"min_grade_level must be 1..4, got {self.min_grade_level}")
        statuses = self.statuses
        if isinstance(statuses, str):
            statuses = (statuses,)
        object.__setattr__(self, "statuses", frozenset(Status(s) for s in statuses))
        object.__setattr__(self, "topics", _frozen_strings(self.topics, "topics"))
        object.__setattr__(self, "scopes", _frozen_strings(self.scopes, "scopes"))
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ValueError(f"date_from {self.date_from} is after date_to {self.date_to}")

    @classmethod
    def current_only(cls, **conditions: object) -> SearchFilters:
        """Only current passages (superseded and withdrawn ones excluded).

        This is the default of the agentic RAG condition. Extra keyword arguments set
        the other conditions, e.g. ``SearchFilters.current_only(min_grade_level=2)``.
        """
        return cls(statuses=frozenset({Status.CURRENT}), **conditions)  # type: ignore[arg-type]

    @property
    def is_unrestricted(self) -> bool:
        """True when the filter lets every passage through."""
        return (
            self.min_grade_level is None
            and self.statuses >= ALL_STATUSES
            and self.topics is None
            and self.scopes is None
            and self.date_from is None
            and self.date_to is None
        )

    def matches(self, passage: Passage) -> bool:
        """Whether ``passage`` passes every condition (the reference semantics)."""
        if self.min_grade_level is not None and passage.grade.level > self.min_grade_level:
            return False
        if passage.status not in self.statuses:
            return False
        if self.topics is not None and passage.topic not in self.topics:
            return False
        if self.scopes is not None and passage.scope not in self.scopes:
            return False
        if self.date_from is not None or self.date_to is not None:
            date = passage.source.date
            if date is None:
                return False
            if self.date_from is not None and date < self.date_from:
                return False
            if self.date_to is not None and date > self.date_to:
                return False
        return True


def allowed_statuses(include_superseded: bool, include_withdrawn: bool) -> frozenset[Status]:
    """The statuses a search returns under the status rule (current always)."""
    statuses = {Status.CURRENT}
    if include_superseded:
        statuses.add(Status.SUPERSEDED)
    if include_withdrawn:
        statuses.add(Status.WITHDRAWN)
    return frozenset(statuses)


def with_status_rule(
    filters: SearchFilters | None, include_superseded: bool, include_withdrawn: bool
) -> SearchFilters | None:
    """``filters`` narrowed to the statuses the flags allow (None when unrestricted)."""
    allowed = allowed_statuses(include_superseded, include_withdrawn)
    base = filters or SearchFilters()
    statuses = base.statuses & allowed
    if base.statuses and not statuses:
        asked = ", ".join(sorted(s.value for s in base.statuses))
        raise ValueError(
            f"filters keep only {asked} passages, which the search excludes: pass "
            "include_superseded=True / include_withdrawn=True"
        )
    if statuses != base.statuses:
        base = replace(base, statuses=statuses)
    return None if base.is_unrestricted else base


@dataclass(frozen=True)
class RerankWeights:
    """Weights of the grade-aware rerank score (formula in the module docstring).

    Attributes:
        grade: weight of the grade term ``(4 - level) / 3`` (0 for level 4 .. 1 for
            level 1).
        recency: weight of the recency term ``2 ** (-age / half_life)``.
        half_life_years: age at which the recency term halves.
        depth: candidates considered per query, as a multiple of ``k`` (at least
            ``min_candidates``); a passage outside the similarity top
            ``max(depth * k, min_candidates)`` cannot be reranked into the results.
        min_candidates: lower bound of the candidate pool.
    """

    grade: float = 0.06
    recency: float = 0.03
    half_life_years: float = 5.0
    depth: int = 4
    min_candidates: int = field(default=20)

    def __post_init__(self) -> None:
        if self.half_life_years <= 0:
            raise ValueError("half_life_years must be positive")
        if self.depth < 1 or self.min_candidates < 1:
            raise ValueError("depth and min_candidates must be >= 1")

    def candidates(self, k: int) -> int:
        """Size of the similarity candidate pool for ``k`` results."""
        return max(self.depth * k, self.min_candidates, k)


def rerank_scores(
    similarity: np.ndarray,
    grade_level: np.ndarray,
    date_ordinal: np.ndarray,
    reference_ordinal: int | None,
    weights: RerankWeights,
) -> np.ndarray:
    """The rerank score of each candidate (vectorized; see the module docstring).

    Args:
        similarity: cosine similarities.
        grade_level: normalized grade levels (1..4), same shape.
        date_ordinal: ``date.toordinal()`` of each source date, 0 when undated.
        reference_ordinal: the ordinal that counts as "now" (age 0); ``None`` disables
            the recency term.
        weights: the rerank weights.

    Returns:
        float64 scores, same shape as ``similarity``.
    """
    score = similarity.astype(np.float64) + weights.grade * (4.0 - grade_level) / 3.0
    if reference_ordinal is not None and weights.recency:
        dated = date_ordinal > 0
        age_years = np.maximum(reference_ordinal - date_ordinal, 0) / 365.25
        recency = np.where(dated, np.exp2(-age_years / weights.half_life_years), 0.0)
        score = score + weights.recency * recency
    return score
