"""Summary counts of a corpus (what ``safescale corpus stats`` prints)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from safescale.corpora.corpus import Corpus

__all__ = ["CorpusStats", "corpus_stats"]


@dataclass(frozen=True)
class CorpusStats:
    """Counts of passages and items along the axes researchers filter by.

    Attributes:
        name: corpus name.
        passages: number of passages.
        items: number of items.
        passages_by_level_status: (grade level, status) -> passages.
        passages_by_system: grade system -> passages.
        items_by_task_category: (task or "-", category) -> items.
        evidence_groups: number of distinct ``evidence_id`` values.
        items_with_defer: items that offer a defer option.
    """

    name: str
    passages: int
    items: int
    passages_by_level_status: dict[tuple[int, str], int]
    passages_by_system: dict[str, int]
    items_by_task_category: dict[tuple[str, str], int]
    evidence_groups: int
    items_with_defer: int


def corpus_stats(corpus: Corpus) -> CorpusStats:
    """Count a corpus's passages by grade level and status, items by task and category."""
    by_level = Counter((p.grade.level, str(p.status)) for p in corpus.passages)
    by_system = Counter(p.grade.system for p in corpus.passages)
    by_task = Counter(
        (str(i.task) if i.task is not None else "-", i.category) for i in corpus.items
    )
    return CorpusStats(
        name=corpus.name,
        passages=len(corpus.passages),
        items=len(corpus.items),
        passages_by_level_status=dict(sorted(by_level.items())),
        passages_by_system=dict(sorted(by_system.items())),
        items_by_task_category=dict(sorted(by_task.items())),
        evidence_groups=len({i.evidence_id for i in corpus.items}),
        items_with_defer=sum(1 for i in corpus.items if i.labels.defer is not None),
    )
