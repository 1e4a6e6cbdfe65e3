"""An in-memory corpus: manifest, passages and items, with a content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from safescale.corpora.schema import Item, Manifest, Passage, SafetyLabels

__all__ = ["Corpus"]


@dataclass(frozen=True)
class Corpus:
    """A loaded, validated corpus.

    Attributes:
        manifest: the parsed ``corpus.yaml``.
        passages: passages in file order.
        items: benchmark items in file order (may be empty).
        path: the directory it was loaded from, if any.
    """

    manifest: Manifest
    passages: tuple[Passage, ...]
    items: tuple[Item, ...] = ()
    path: Path | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    @cached_property
    def passages_by_id(self) -> dict[str, Passage]:
        return {p.id: p for p in self.passages}

    @cached_property
    def items_by_id(self) -> dict[str, Item]:
        return {i.id: i for i in self.items}

    def passage(self, passage_id: str) -> Passage:
        """The passage with this id (KeyError naming the id and corpus otherwise)."""
        try:
            return self.passages_by_id[passage_id]
        except KeyError:
            raise KeyError(f"corpus {self.name!r} has no passage {passage_id!r}") from None

    def item(self, item_id: str) -> Item:
        """The item with this id (KeyError naming the id and corpus otherwise)."""
        try:
            return self.items_by_id[item_id]
        except KeyError:
            raise KeyError(f"corpus {self.name!r} has no item {item_id!r}") from None

    @cached_property
    def safety_labels(self) -> SafetyLabels:
        """Provenance of the items' ``high_risk`` / ``unsafe`` labels.

        The manifest's ``safety_labels`` when it has one; otherwise each label is
        ``labeled`` when at least one item carries it and ``unlabeled`` when none does
        (a corpus whose items name no unsafe option cannot tell a safe model from an
        unlabeled set, so its unsafe rate is reported as "not labeled", not 0 %).
        """
        if self.manifest.safety_labels is not None:
            return self.manifest.safety_labels
        return SafetyLabels(
            high_risk="labeled" if any(i.labels.high_risk for i in self.items) else "unlabeled",
            unsafe="labeled" if any(i.labels.unsafe for i in self.items) else "unlabeled",
        )

    @cached_property
    def passages_hash(self) -> str:
        """sha256 over the canonical JSON of the passages (what an index depends on)."""
        digest = hashlib.sha256()
        for passage in self.passages:
            digest.update(_canonical(passage.model_dump(mode="json")))
        return digest.hexdigest()

    @cached_property
    def content_hash(self) -> str:
        """sha256 over manifest, passages and items (what a run depends on)."""
        digest = hashlib.sha256()
        digest.update(_canonical(self.manifest.dump()))
        digest.update(self.passages_hash.encode())
        for item in self.items:
            digest.update(_canonical(item.model_dump(mode="json")))
        return digest.hexdigest()


def _canonical(obj: object) -> bytes:
    return (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    )
