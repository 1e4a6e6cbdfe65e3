"""Light, deterministic stand-ins for tests of code that uses the evidence store.

:class:`HashingEmbedder` implements the :class:`~safescale.models.embedder.Embedder`
interface without a neural model: a text becomes the signed counts of its hashed
character n-grams, normalized. Texts sharing many n-grams get similar vectors, so
searches behave sensibly, and everything is fast and reproducible across processes.
:func:`make_corpus` assembles a small in-memory corpus from passages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import zlib
from collections.abc import Sequence

import numpy as np

from safescale.corpora.corpus import Corpus
from safescale.corpora.schema import Grade, GradeSystemSpec, Manifest, Passage, Source, Status

__all__ = ["HashingEmbedder", "make_corpus", "make_passage"]


class HashingEmbedder:
    """Hashed character n-gram embedder (no model weights).

    Args:
        dimension: vector length.
        ngram: n-gram length.
        seed: changes the hashing (and therefore ``content_hash``).

    Attributes:
        calls: number of ``encode`` calls so far.
        texts_encoded: number of texts embedded so far.
    """

    def __init__(self, dimension: int = 64, ngram: int = 3, seed: int = 0) -> None:
        self.dimension = dimension
        self.ngram = ngram
        self.seed = seed
        self.name = f"hashing-{ngram}gram-d{dimension}"
        self.content_hash = hashlib.sha256(
            f"safescale.hashing-embedder:{dimension}:{ngram}:{seed}".encode()
        ).hexdigest()
        self.calls = 0
        self.texts_encoded = 0

    def _vector(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dimension, dtype=np.float32)
        padded = f" {text.lower()} "
        for i in range(max(1, len(padded) - self.ngram + 1)):
            h = zlib.crc32(padded[i : i + self.ngram].encode(), self.seed)
            vector[h % self.dimension] += 1.0 if (h >> 16) & 1 else -1.0
        return vector

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        normalize: bool = True,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed ``texts`` into a ``(len(texts), dimension)`` float32 array."""
        self.calls += 1
        self.texts_encoded += len(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self._vector(text)
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            np.divide(out, norms, out=out, where=norms > 0)
        return out


def make_passage(
    passage_id: str,
    text: str,
    *,
    level: int = 1,
    status: Status | str = Status.CURRENT,
    topic: str = "general",
    scope: str | None = None,
    date: dt.date | None = None,
    org: str = "Test Society",
) -> Passage:
    """A passage with a one-line source and a grade of the given level."""
    return Passage(
        id=passage_id,
        text=text,
        source=Source(org=org, title=f"Guideline {passage_id}", date=date),
        grade=Grade(system="levels", raw=f"L{level}", level=level),
        status=Status(status),
        topic=topic,
        scope=scope,
    )


def make_corpus(passages: Sequence[Passage], name: str = "test-corpus") -> Corpus:
    """An in-memory corpus holding ``passages`` and no items."""
    manifest = Manifest(
        name=name,
        version="1",
        description="in-memory test corpus",
        license="CC0-1.0",
        disclaimer="not for clinical use",
        grade_systems={"levels": GradeSystemSpec(levels={f"L{i}": i for i in range(1, 5)})},
    )
    return Corpus(manifest=manifest, passages=tuple(passages))
