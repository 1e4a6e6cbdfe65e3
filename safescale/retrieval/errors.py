"""Errors raised by the evidence store."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CorruptIndexError", "EvidenceStoreError", "StaleIndexError"]


class EvidenceStoreError(Exception):
    """Base class of evidence-store errors.

    Attributes:
        path: the store directory or file the error is about, when there is one.
    """

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class StaleIndexError(EvidenceStoreError):
    """A saved index was built from other passages or another embedder.

    Raised by :meth:`EvidenceStore.load` when the corpus' ``passages_hash`` (or the
    embedder's ``content_hash``) differs from the one recorded in the store manifest.
    Pass ``rebuild_if_stale=True`` to rebuild instead.
    """


class CorruptIndexError(EvidenceStoreError):
    """A saved store is incomplete, truncated, tampered with or of an unknown format."""
