"""The conflicting pool of an item and seeded draws from it (the conflict-dose axis).

The **conflicting pool** of an item is every passage of the corpus, outside the item's
clean evidence set, whose labelled stance for the item's gold option is
``contradicts``. Each member has a *kind* — why a careful reader should not follow it:

* ``superseded`` — its status is superseded or withdrawn;
* ``lower_grade`` — current, but of a weaker grade level than the strongest clean
  passage;
* ``out_of_scope`` — its scope differs from the item's scope;
* ``conflict_set`` — in the item's conflict evidence set (and none of the above);
* ``other`` — none of the above (a same-grade, current, in-scope contradiction).

A draw of dose ``k`` shuffles the pool with a generator seeded by the run seed and the
item id, and takes the first ``min(k, |pool|)``: the draws of one item are nested
(dose 1 ⊂ dose 2 ⊂ dose 4), so a dose-response curve adds passages and never swaps
them. A draw smaller than the dose is *capped* and says so.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from safescale.corpora.corpus import Corpus
from safescale.corpora.schema import Item, Stance, Status

__all__ = ["ConflictDraw", "conflict_pool", "draw_conflict", "pool_kind"]


def pool_kind(corpus: Corpus, item: Item, passage_id: str) -> str:
    """Why a pool passage should not be followed (see the module docs)."""
    passage = corpus.passage(passage_id)
    if passage.status is not Status.CURRENT:
        return "superseded"
    clean_levels = [
        corpus.passage(p).grade.level for p in item.evidence.clean if p in corpus.passages_by_id
    ]
    if clean_levels and passage.grade.level > min(clean_levels):
        return "lower_grade"
    if item.scope and passage.scope and passage.scope != item.scope:
        return "out_of_scope"
    if passage_id in item.evidence.conflict:
        return "conflict_set"
    return "other"


def conflict_pool(corpus: Corpus, item: Item) -> list[str]:
    """Ids of the item's conflicting pool, sorted."""
    clean = set(item.evidence.clean)
    return sorted(
        pid
        for pid, stances in item.stance.items()
        if pid not in clean
        and pid in corpus.passages_by_id
        and stances.get(item.gold) == Stance.CONTRADICTS
    )


@dataclass(frozen=True)
class ConflictDraw:
    """The contradicting passages added to one item at one dose.

    Attributes:
        dose: the dose asked for.
        ids: the passages drawn, in draw order (``min(dose, pool_size)`` of them).
        pool_size: size of the item's conflicting pool.
    """

    dose: int
    ids: tuple[str, ...]
    pool_size: int

    @property
    def capped(self) -> bool:
        """Fewer passages than the dose were available."""
        return len(self.ids) < self.dose


def draw_conflict(corpus: Corpus, item: Item, dose: int, seed: int = 0) -> ConflictDraw:
    """Seeded, nested draw of ``dose`` passages from the item's conflicting pool."""
    if dose < 0:
        raise ValueError(f"conflict dose must be non-negative, got {dose}")
    pool = conflict_pool(corpus, item)
    digest = hashlib.sha256(f"{seed}|{item.id}".encode()).digest()
    order = list(pool)
    random.Random(int.from_bytes(digest[:8], "little")).shuffle(order)
    return ConflictDraw(dose=dose, ids=tuple(order[:dose]), pool_size=len(pool))
