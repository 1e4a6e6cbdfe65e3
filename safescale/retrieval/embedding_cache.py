"""A persistent cache of passage embeddings keyed by (embedder hash, text hash).

One SQLite file per embedder (``<cache>/embeddings/<embedder content hash>.sqlite``)
maps the sha256 of a text to its normalized float32 vector. Rebuilding an index after
a small corpus edit therefore embeds only the passages whose text changed. SQLite (in
WAL mode) makes concurrent readers and writers from several processes safe; a cache
file that turns out to be unreadable is moved aside and started afresh, since every
entry can be recomputed.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["EmbeddingCache", "embed_with_cache", "text_key"]

log = logging.getLogger(__name__)

_FORMAT = 1
_CHUNK = 500  # keys per SELECT ... IN (...) (below SQLite's variable limit)


def text_key(text: str) -> bytes:
    """The cache key of a text: its UTF-8 sha256 digest (32 bytes)."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Normalized embeddings of one embedder, persisted in SQLite.

    Args:
        path: the SQLite file (created if missing).
        embedder_hash: the embedder's ``content_hash`` (checked against the file).
        dimension: vector length (checked against the file).

    Raises:
        ValueError: when an existing file belongs to another embedder or dimension.
    """

    def __init__(self, path: Path, embedder_hash: str, dimension: int) -> None:
        self.path = Path(path)
        self.embedder_hash = embedder_hash
        self.dimension = int(dimension)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{uuid.uuid4().hex[:8]}")
            log.warning("embedding cache %s is unreadable (%s); moved to %s", path, exc, aside)
            self.path.rename(aside)
            self._conn = self._open()

    @classmethod
    def for_embedder(cls, embedder_hash: str, dimension: int, cache_dir: Path) -> EmbeddingCache:
        """The cache file of an embedder under ``cache_dir/embeddings/``."""
        return cls(cache_dir / "embeddings" / f"{embedder_hash}.sqlite", embedder_hash, dimension)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, vector BLOB NOT NULL)"
            " WITHOUT ROWID"
        )
        expected = {
            "format": str(_FORMAT),
            "embedder_hash": self.embedder_hash,
            "dimension": str(self.dimension),
        }
        with conn:
            conn.executemany(
                "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", expected.items()
            )
        stored = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        for key, value in expected.items():
            if stored.get(key) != value:
                conn.close()
                raise ValueError(
                    f"embedding cache {self.path} has {key}={stored.get(key)!r}, expected {value!r}"
                )
        return conn

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vectors among ``keys`` (missing keys are absent from the result)."""
        found: dict[bytes, np.ndarray] = {}
        nbytes = 4 * self.dimension
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._conn.execute(
                f"SELECT key, vector FROM vectors WHERE key IN ({marks})", chunk
            ).fetchall()
            for key, blob in rows:
                if len(blob) == nbytes:
                    found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Store ``vectors[i]`` under ``keys[i]`` (one transaction)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dimension):
            raise ValueError(
                f"expected vectors of shape {(len(keys), self.dimension)}, got {vectors.shape}"
            )
        rows = [(key, vectors[i].tobytes()) for i, key in enumerate(keys)]
        for attempt in range(5):
            try:
                with self._conn:
                    self._conn.executemany(
                        "INSERT OR REPLACE INTO vectors (key, vector) VALUES (?, ?)", rows
                    )
                return
            except sqlite3.OperationalError as exc:  # "database is locked" under contention
                if "locked" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def embed_with_cache(
    texts: Sequence[str],
    encode: Callable[[list[str]], np.ndarray],
    dimension: int,
    cache: EmbeddingCache | None,
    *,
    chunk_size: int,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Embed ``texts``, reusing and filling ``cache``.

    Duplicate texts are embedded once. Texts still to embed are sorted by length before
    being cut into chunks of ``chunk_size`` (less padding per batch), and each chunk is
    written to the cache as soon as it is done, so an interrupted build resumes where
    it stopped.

    Args:
        texts: the texts, in row order.
        encode: embeds a list of texts into a ``(n, dimension)`` array.
        dimension: vector length.
        cache: the cache to read and fill, or None.
        chunk_size: texts per ``encode`` call.
        on_progress: called as ``on_progress(done, total)`` over the distinct texts
            that need embedding (first with ``done=0``).

    Returns:
        ``(vectors, n_embedded)``: unit-norm float32 vectors in row order and how many
        distinct texts had to be embedded.
    """
    keys = [text_key(t) for t in texts]
    unique: dict[bytes, int] = {}
    for row, key in enumerate(keys):
        unique.setdefault(key, row)
    vectors_by_key = cache.get_many(list(unique)) if cache is not None else {}
    missing = [key for key in unique if key not in vectors_by_key]
    if on_progress is not None:
        on_progress(0, len(missing))
    missing.sort(key=lambda key: len(texts[unique[key]]))
    for start in range(0, len(missing), chunk_size):
        chunk = missing[start : start + chunk_size]
        encoded = np.asarray(encode([texts[unique[key]] for key in chunk]), dtype=np.float32)
        if encoded.shape != (len(chunk), dimension):
            raise ValueError(
                f"embedder returned shape {encoded.shape}, expected {(len(chunk), dimension)}"
            )
        if not np.isfinite(encoded).all():
            raise ValueError("embedder returned non-finite values")
        encoded = _normalize(encoded)
        if cache is not None:
            cache.put_many(chunk, encoded)
        for i, key in enumerate(chunk):
            vectors_by_key[key] = encoded[i]
        if on_progress is not None:
            on_progress(start + len(chunk), len(missing))
    out = np.empty((len(texts), dimension), dtype=np.float32)
    for row, key in enumerate(keys):
        out[row] = vectors_by_key[key]
    return out, len(missing)


def _normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
