"""The evidence store: graded passages, their embeddings and a FAISS index.

A store is built from a :class:`~safescale.corpora.corpus.Corpus` and an embedder,
searched by text or by vector with metadata filters, and saved as a directory::

    <dir>/manifest.json     schema version, corpus name + passages hash, embedder name +
                            content hash, dimension, index type + parameters, passage
                            count, and the size + sha256 of every file below
    <dir>/index.faiss       the FAISS index (FAISS' own binary format)
    <dir>/passages.parquet  passage metadata aligned with vector ids (row i = id i)
    <dir>/index.ivfdata     (ivfpq_disk only) the on-disk inverted lists
    <dir>/vectors.f32       (ivfpq_disk only) the exact unit vectors, row i = id i

Nothing is pickled. Saving writes a temporary sibling directory and renames it into
place, so readers never see a half-written store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, overload

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from safescale.corpora.corpus import Corpus
from safescale.corpora.schema import Passage
from safescale.retrieval.embedding_cache import EmbeddingCache, embed_with_cache
from safescale.retrieval.errors import CorruptIndexError, StaleIndexError
from safescale.retrieval.faiss_index import (
    SEARCH_PARAMS,
    IndexType,
    build_faiss_index,
    faiss_search,
    prepare_index,
    reconstruct,
    resolve_params,
)
from safescale.retrieval.filters import (
    RerankWeights,
    SearchFilters,
    rerank_scores,
    with_status_rule,
)
from safescale.retrieval.ondisk import ONDISK_FILES, OnDiskIndex, build_ondisk_index
from safescale.retrieval.table import PassageTable

if TYPE_CHECKING:
    from safescale.models.embedder import Embedder

__all__ = [
    "STORE_SCHEMA_VERSION",
    "BuildStats",
    "EvidenceStore",
    "Hit",
    "StoreManifest",
    "open_store",
    "store_dir",
]

log = logging.getLogger(__name__)

STORE_SCHEMA_VERSION = 1
_FORMAT = "safescale.evidence-store"
MANIFEST = "manifest.json"
INDEX_FILE = "index.faiss"
TABLE_FILE = "passages.parquet"

# Filters passing at most this many passages are answered by an exact scan of just
# those passages (their vectors are cached per filter).
EXACT_SUBSET_LIMIT = 8192
_EXACT_CHUNK = 65536
_SUBSET_CACHE_SIZE = 4
_QUERY_CACHE_SIZE = 512
# Below this many queries FAISS does not use BLAS; see EvidenceStore.small_batch_threads.
_SMALL_BATCH = 20


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        passage: the retrieved passage.
        score: the ranking score: the cosine similarity, or the rerank score when the
            search was reranked.
        rank: 1-based position in the result list.
        similarity: the cosine similarity between query and passage.
    """

    passage: Passage
    score: float
    rank: int
    similarity: float

    @property
    def passage_id(self) -> str:
        return self.passage.id


@dataclass(frozen=True)
class BuildStats:
    """What a build did: passages indexed, texts embedded vs reused from the cache."""

    passages: int
    embedded: int
    reused: int
    embed_seconds: float
    index_seconds: float


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CorpusInfo(_Section):
    name: str
    passages_hash: str


class EmbedderInfo(_Section):
    name: str
    content_hash: str
    dimension: int


class IndexInfo(_Section):
    type: IndexType
    params: dict[str, int]
    requested: dict[str, int]
    faiss_version: str


class FileInfo(_Section):
    bytes: int
    sha256: str


class StoreManifest(_Section):
    """``manifest.json`` of a saved store."""

    format: Literal["safescale.evidence-store"] = _FORMAT
    schema_version: int = STORE_SCHEMA_VERSION
    corpus: CorpusInfo
    embedder: EmbedderInfo
    index: IndexInfo
    passage_count: int
    reference_date: dt.date | None = None
    files: dict[str, FileInfo] = {}


class EvidenceStore:
    """Graded passages searchable by embedding similarity.

    Build one with :meth:`build` (from a corpus) or :meth:`from_vectors` (from
    precomputed embeddings), load one with :meth:`load`, or let :func:`open_store`
    do either with a cache directory.

    Attributes:
        index: the FAISS index (vector id = row of ``table``).
        table: passage metadata.
        manifest: the store's description (files are filled in on save).
        embedder: the embedder used for text queries (loaded lazily if None).
        build_stats: set by :meth:`build`.
        small_batch_threads: OpenMP threads FAISS may use for a search of fewer than
            20 queries (default 1; None = FAISS' default). Single queries gain little
            from threads, and on a busy machine (a language model in the same process,
            parallel sweep cells) waiting for a second thread can cost tens of ms.
    """

    def __init__(
        self,
        index: faiss.Index,
        table: PassageTable,
        manifest: StoreManifest,
        embedder: Embedder | None = None,
    ) -> None:
        if index.ntotal != len(table):
            raise ValueError(f"index holds {index.ntotal} vectors, table {len(table)} rows")
        self.index = index
        self.table = table
        self.manifest = manifest
        self.embedder = embedder
        self.build_stats: BuildStats | None = None
        self._search_params = dict(manifest.index.params)
        self._subsets: OrderedDict[SearchFilters, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._query_vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self.small_batch_threads: int | None = 1
        self._lock = threading.Lock()
        # an ivfpq_disk index built into a scratch directory that save() moves into place
        # (a finalizer removing it, also when the store is dropped unsaved)
        self._temporary_dir: weakref.finalize | None = None

    # -- construction ---------------------------------------------------------------

    @classmethod
    def build(
        cls,
        corpus: Corpus,
        embedder: Embedder,
        index: IndexType = "flat",
        *,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        batch_size: int = 64,
        show_progress: bool | None = None,
        index_dir: str | Path | None = None,
        **params: int,
    ) -> EvidenceStore:
        """Embed a corpus' passages and index them.

        Passage texts are embedded with unit norm in batches of ``batch_size``; vectors
        already in the embedding cache (keyed by embedder hash and text hash) are
        reused, new ones are added to it.

        Args:
            corpus: the corpus whose passages to index.
            embedder: the embedder (also used later for text queries).
            index: ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"``.
            cache_dir: root of the embedding cache (default: ``$SAFESCALE_CACHE`` or
                ``~/.cache/safescale``).
            use_cache: read and fill the embedding cache.
            batch_size: texts per embedder forward pass.
            show_progress: show a rich progress bar (default: when on a terminal).
            index_dir: where an ``ivfpq_disk`` index writes its files (default: a new
                directory under ``<cache>/indexes/``, moved into place by :meth:`save`).
            **params: index parameters (see :mod:`safescale.retrieval.faiss_index`).

        An ``ivfpq_disk`` index is built in chunks: the passages are embedded
        ``chunk`` at a time and never held as one matrix (:mod:`.ondisk`).

        Raises:
            ValueError: on an empty corpus or invalid index parameters.
        """
        passages = corpus.passages
        if not passages:
            raise ValueError(f"corpus {corpus.name!r} has no passages to index")
        resolve_params(index, len(passages), params, embedder.dimension)  # fail early
        if index == "ivfpq_disk":
            return cls._build_ondisk(
                corpus,
                embedder,
                cache_dir,
                use_cache,
                batch_size,
                show_progress,
                index_dir,
                params,
            )
        cache = None
        if use_cache:
            root = Path(cache_dir) if cache_dir is not None else _cache_root()
            cache = EmbeddingCache.for_embedder(embedder.content_hash, embedder.dimension, root)
        started = time.perf_counter()
        try:
            with _EmbedProgress(corpus.name, show_progress) as progress:
                vectors, embedded = embed_with_cache(
                    [p.text for p in passages],
                    lambda texts: embedder.encode(texts, batch_size=batch_size, normalize=True),
                    embedder.dimension,
                    cache,
                    chunk_size=batch_size * 16,
                    on_progress=progress.update,
                )
        finally:
            if cache is not None:
                cache.close()
        embed_seconds = time.perf_counter() - started
        store = cls.from_vectors(
            vectors,
            PassageTable.from_passages(passages),
            index=index,
            corpus_name=corpus.name,
            passages_hash=corpus.passages_hash,
            embedder_name=embedder.name,
            embedder_hash=embedder.content_hash,
            embedder=embedder,
            **params,
        )
        store.build_stats = BuildStats(
            passages=len(passages),
            embedded=embedded,
            reused=len(passages) - embedded,
            embed_seconds=embed_seconds,
            index_seconds=time.perf_counter() - started - embed_seconds,
        )
        return store

    @classmethod
    def _build_ondisk(
        cls,
        corpus: Corpus,
        embedder: Embedder,
        cache_dir: str | Path | None,
        use_cache: bool,
        batch_size: int,
        show_progress: bool | None,
        index_dir: str | Path | None,
        params: dict[str, int],
    ) -> EvidenceStore:
        passages = corpus.passages
        resolved = resolve_params("ivfpq_disk", len(passages), params, embedder.dimension)
        root = Path(cache_dir) if cache_dir is not None else _cache_root()
        cache = (
            EmbeddingCache.for_embedder(embedder.content_hash, embedder.dimension, root)
            if use_cache
            else None
        )
        counts = {"embedded": 0}
        started = time.perf_counter()

        def chunks() -> Iterator[np.ndarray]:
            step = resolved["chunk"]
            for start in range(0, len(passages), step):
                texts = [p.text for p in passages[start : start + step]]
                vectors, embedded = embed_with_cache(
                    texts,
                    lambda t: embedder.encode(t, batch_size=batch_size, normalize=True),
                    embedder.dimension,
                    cache,
                    chunk_size=batch_size * 16,
                )
                counts["embedded"] += embedded
                yield vectors

        temporary = index_dir is None
        directory = (
            Path(index_dir)
            if index_dir is not None
            else root / "indexes" / f".building-{uuid.uuid4().hex[:12]}"
        )
        try:
            with _BuildProgress(corpus.name, show_progress) as progress:
                ondisk = build_ondisk_index(
                    directory,
                    chunks(),
                    len(passages),
                    embedder.dimension,
                    params,
                    progress=progress.update,
                )
        except BaseException:
            if temporary:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        finally:
            if cache is not None:
                cache.close()
        seconds = time.perf_counter() - started
        table = PassageTable.from_passages(passages)
        manifest = _new_manifest(
            table,
            "ivfpq_disk",
            resolved,
            params,
            corpus.name,
            corpus.passages_hash,
            embedder.name,
            embedder.content_hash,
            embedder.dimension,
        )
        store = cls(ondisk, table, manifest, embedder)
        if temporary:
            store._own_build_dir(directory)
        store.build_stats = BuildStats(
            passages=len(passages),
            embedded=counts["embedded"],
            reused=len(passages) - counts["embedded"],
            embed_seconds=seconds,  # embedding and indexing interleave chunk by chunk
            index_seconds=0.0,
        )
        return store

    @classmethod
    def from_vectors(
        cls,
        vectors: np.ndarray,
        table: PassageTable,
        *,
        index: IndexType = "flat",
        corpus_name: str,
        passages_hash: str,
        embedder_name: str,
        embedder_hash: str,
        embedder: Embedder | None = None,
        **params: int,
    ) -> EvidenceStore:
        """Index precomputed embeddings (row ``i`` of ``vectors`` = row ``i`` of ``table``).

        Vectors are normalized to unit length before indexing.
        """
        vectors = np.array(vectors, dtype=np.float32, order="C")
        if vectors.ndim != 2 or vectors.shape[0] != len(table):
            raise ValueError(f"expected vectors of shape ({len(table)}, d), got {vectors.shape}")
        if embedder is not None and embedder.dimension != vectors.shape[1]:
            raise ValueError(
                f"embedder dimension {embedder.dimension} != vector dimension {vectors.shape[1]}"
            )
        faiss.normalize_L2(vectors)
        d = vectors.shape[1]
        resolved = resolve_params(index, len(table), params, d)
        manifest = _new_manifest(
            table,
            index,
            resolved,
            params,
            corpus_name,
            passages_hash,
            embedder_name,
            embedder_hash,
            d,
        )
        if index == "ivfpq_disk":  # chunks of the given matrix, into a build directory
            directory = _cache_root() / "indexes" / f".building-{uuid.uuid4().hex[:12]}"
            step = resolved["chunk"]
            blocks = (vectors[i : i + step] for i in range(0, len(vectors), step))
            ondisk = build_ondisk_index(directory, blocks, len(vectors), d, params)
            store = cls(ondisk, table, manifest, embedder)
            store._own_build_dir(directory)
            return store
        faiss_index = build_faiss_index(index, vectors, resolved)
        return cls(faiss_index, table, manifest, embedder)

    # -- properties -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return (
            f"EvidenceStore(corpus={self.corpus_name!r}, passages={len(self)}, "
            f"index={self.index_type!r}, embedder={self.manifest.embedder.name!r})"
        )

    @property
    def index_type(self) -> IndexType:
        return self.manifest.index.type

    @property
    def params(self) -> dict[str, int]:
        """Index parameters in effect (build parameters plus current search effort)."""
        return dict(self._search_params)

    @property
    def dimension(self) -> int:
        return self.manifest.embedder.dimension

    @property
    def corpus_name(self) -> str:
        return self.manifest.corpus.name

    @property
    def passages_hash(self) -> str:
        return self.manifest.corpus.passages_hash

    def passage(self, passage_id: str) -> Passage:
        """The stored passage with this id (KeyError if absent)."""
        return self.table.passage(self.table.row_of(passage_id))

    def set_search_params(self, **params: int) -> None:
        """Change search effort: ``nprobe`` (ivf, ivfpq_disk), ``rerank`` (ivfpq_disk) or
        ``ef_search`` (hnsw)."""
        unknown = set(params) - (SEARCH_PARAMS & set(self._search_params))
        if unknown:
            raise ValueError(
                f"cannot set {sorted(unknown)} on a {self.index_type!r} index at search time"
            )
        merged = {**self.manifest.index.requested, **params}
        resolved = resolve_params(self.index_type, len(self), merged, self.dimension)
        self._search_params.update({k: resolved[k] for k in params})

    # -- search ---------------------------------------------------------------------

    @overload
    def search(
        self,
        query: str,
        k: int = ...,
        filters: SearchFilters | None = ...,
        rerank: bool = ...,
        weights: RerankWeights | None = ...,
        *,
        include_superseded: bool = ...,
        include_withdrawn: bool = ...,
    ) -> list[Hit]: ...

    @overload
    def search(
        self,
        query: Sequence[str],
        k: int = ...,
        filters: SearchFilters | None = ...,
        rerank: bool = ...,
        weights: RerankWeights | None = ...,
        *,
        include_superseded: bool = ...,
        include_withdrawn: bool = ...,
    ) -> list[list[Hit]]: ...

    def search(
        self,
        query: str | Sequence[str],
        k: int = 5,
        filters: SearchFilters | None = None,
        rerank: bool = False,
        weights: RerankWeights | None = None,
        *,
        include_superseded: bool = False,
        include_withdrawn: bool = False,
    ) -> list[Hit] | list[list[Hit]]:
        """Retrieve the passages most similar to a query (or to each of several).

        Status rule (the same for the store, :class:`EvidenceRetriever` and
        ``safescale index search``): by default only **current** passages are returned;
        ``include_superseded=True`` / ``include_withdrawn=True`` let superseded /
        withdrawn ones through as well. ``filters.statuses`` can narrow this further,
        never widen it. A caller that wants every passage (e.g. the standard-RAG
        baseline) passes both flags.

        Filtering: passages failing ``filters`` are excluded inside the vector search
        (FAISS ``IDSelectorBitmap``), so the result has ``min(k, passing passages)``
        hits. When at most ``EXACT_SUBSET_LIMIT`` passages pass, their vectors are
        scanned exactly instead. An approximate index (ivf/hnsw) can come back short
        when the passing passages are rare near the query; such queries are retried
        with 4x and then 16x the search effort (``nprobe``/``ef_search``), and if still
        short, answered by an exact scan of the passing passages. Nothing is
        over-fetched and discarded afterwards, so a filter never costs results.

        Reranking (off by default): the top ``weights.candidates(k)`` passages by
        similarity (after filtering) are re-ordered by the grade- and recency-aware
        score documented in :mod:`safescale.retrieval.filters`; ``Hit.score`` is then
        that score and ``Hit.similarity`` the cosine similarity.

        Args:
            query: a query text, or a list of them.
            k: hits per query.
            filters: metadata conditions, or None for all passages.
            rerank: apply grade-aware reranking.
            weights: rerank weights (default :class:`RerankWeights`).
            include_superseded: also return superseded passages.
            include_withdrawn: also return withdrawn passages.

        Returns:
            Hits best first for a single query; a list of such lists for a list.
        """
        single = isinstance(query, str)
        texts = [query] if single else list(query)
        results = self.search_vectors(
            self._embed_queries(texts),
            k,
            filters,
            rerank,
            weights,
            include_superseded=include_superseded,
            include_withdrawn=include_withdrawn,
        )
        return results[0] if single else results

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 5,
        filters: SearchFilters | None = None,
        rerank: bool = False,
        weights: RerankWeights | None = None,
        *,
        include_superseded: bool = False,
        include_withdrawn: bool = False,
    ) -> list[list[Hit]]:
        """:meth:`search` with query embeddings instead of texts (same status rule).

        Args:
            vectors: ``(d,)`` or ``(nq, d)`` query embeddings (normalized here).

        Returns:
            One hit list per query row.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = np.array(vectors, dtype=np.float32, ndmin=2, order="C")
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(
                f"query vectors must have dimension {self.dimension}, got shape {queries.shape}"
            )
        faiss.normalize_L2(queries)
        weights = weights or RerankWeights()
        fetch = weights.candidates(k) if rerank else k
        filters = with_status_rule(filters, include_superseded, include_withdrawn)
        mask = self.table.mask(filters)
        passing = len(self) if mask is None else int(np.count_nonzero(mask))
        want = min(fetch, passing)
        if want == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        threads = self.small_batch_threads if len(queries) < _SMALL_BATCH else None
        with _omp_threads(threads):
            if mask is not None and passing <= EXACT_SUBSET_LIMIT:
                rows, subset = self._subset_vectors(filters, mask)  # type: ignore[arg-type]
                scores, ids = _knn(queries, subset, rows, want)
            else:
                scores, ids = self._filtered_search(queries, want, mask)
        return [self._hits(scores[i], ids[i], k, rerank, weights) for i in range(len(queries))]

    def _filtered_search(
        self, queries: np.ndarray, want: int, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        bitmap = None if mask is None else np.packbits(mask, bitorder="little")
        scores, ids = faiss_search(
            self.index, self.index_type, self._search_params, queries, want, bitmap
        )
        if self.index_type != "flat":
            for effort in (4, 16):
                short = (ids < 0).any(axis=1)
                if not short.any():
                    break
                scores[short], ids[short] = faiss_search(
                    self.index,
                    self.index_type,
                    self._search_params,
                    queries[short],
                    want,
                    bitmap,
                    effort,
                )
            short = (ids < 0).any(axis=1)
            if short.any():
                rows = np.flatnonzero(mask) if mask is not None else np.arange(len(self))
                scores[short], ids[short] = self._exact_scan(queries[short], rows, want)
        return scores, ids

    def _subset_vectors(
        self, filters: SearchFilters, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            cached = self._subsets.get(filters)
            if cached is not None:
                self._subsets.move_to_end(filters)
                return cached
        rows = np.flatnonzero(mask).astype(np.int64)
        cached = (rows, reconstruct(self.index, rows))
        with self._lock:
            self._subsets[filters] = cached
            if len(self._subsets) > _SUBSET_CACHE_SIZE:
                self._subsets.popitem(last=False)
        return cached

    def _exact_scan(
        self, queries: np.ndarray, rows: np.ndarray, want: int
    ) -> tuple[np.ndarray, np.ndarray]:
        best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        best_ids = np.full((len(queries), 0), -1, dtype=np.int64)
        for start in range(0, len(rows), _EXACT_CHUNK):
            chunk = rows[start : start + _EXACT_CHUNK].astype(np.int64)
            chunk_scores, chunk_ids = _knn(queries, reconstruct(self.index, chunk), chunk, want)
            best_scores = np.hstack([best_scores, chunk_scores])
            best_ids = np.hstack([best_ids, chunk_ids])
            if best_scores.shape[1] > want:
                pick = np.argpartition(-best_scores, want - 1, axis=1)[:, :want]
                best_scores = np.take_along_axis(best_scores, pick, axis=1)
                best_ids = np.take_along_axis(best_ids, pick, axis=1)
        return _sorted(best_scores, best_ids)

    def _hits(
        self, scores: np.ndarray, ids: np.ndarray, k: int, rerank: bool, weights: RerankWeights
    ) -> list[Hit]:
        valid = ids >= 0
        scores, ids = scores[valid].astype(np.float64), ids[valid]
        if rerank and len(ids):
            reference = self.manifest.reference_date
            ranked = rerank_scores(
                scores,
                self.table.grade_level[ids],
                self.table.date_ordinal[ids],
                reference.toordinal() if reference else None,
                weights,
            )
            order = np.lexsort((ids, -scores, -ranked))[:k]
            final = ranked[order]
        else:
            order = np.lexsort((ids, -scores))[:k]
            final = scores[order]
        return [
            Hit(
                passage=self.table.passage(int(ids[j])),
                score=float(final[rank]),
                rank=rank + 1,
                similarity=float(scores[j]),
            )
            for rank, j in enumerate(order)
        ]

    def _embed_queries(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        embedder = self._require_embedder()
        with self._lock:
            known = {t: self._query_vectors[t] for t in texts if t in self._query_vectors}
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            encoded = embedder.encode(missing, normalize=True)
            known.update(zip(missing, np.asarray(encoded, dtype=np.float32), strict=True))
        with self._lock:
            for text in dict.fromkeys(texts):
                self._query_vectors[text] = known[text]
                self._query_vectors.move_to_end(text)
            while len(self._query_vectors) > _QUERY_CACHE_SIZE:
                self._query_vectors.popitem(last=False)
        return np.stack([known[t] for t in texts])

    def _require_embedder(self) -> Embedder:
        if self.embedder is None:
            from safescale.models.embedder import load_embedder

            name = self.manifest.embedder.name
            try:
                embedder = load_embedder(name)
            except (FileNotFoundError, OSError, ValueError) as exc:
                raise RuntimeError(
                    f"this store was built with embedder {name!r}, which cannot be loaded "
                    f"here ({exc}); pass embedder= to EvidenceStore.load or search by vector"
                ) from exc
            self._check_embedder(embedder, None)
            self.embedder = embedder
        return self.embedder

    def _check_embedder(self, embedder: Embedder, path: Path | None) -> None:
        info = self.manifest.embedder
        if embedder.content_hash != info.content_hash or embedder.dimension != info.dimension:
            raise StaleIndexError(
                f"index{f' at {path}' if path else ''} was built with embedder {info.name!r} "
                f"(hash {info.content_hash[:12]}, d={info.dimension}) but the embedder given "
                f"is {embedder.name!r} (hash {embedder.content_hash[:12]}, "
                f"d={embedder.dimension})",
                path,
            )

    # -- persistence ----------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the store to ``directory`` atomically (replacing a previous store there).

        Returns:
            The directory.

        Raises:
            FileExistsError: when ``directory`` exists, is not empty and holds anything but
                a store's own files (a store that lost its manifest is replaced).
        """
        target = Path(directory).expanduser()
        if target.exists() and any(target.iterdir()) and not (target / MANIFEST).exists():
            foreign = {p.name for p in target.iterdir()} - {INDEX_FILE, TABLE_FILE}
            if foreign:
                raise FileExistsError(
                    f"{target} exists and is not an evidence store (holds "
                    f"{', '.join(sorted(foreign)[:3])}); not replacing it"
                )
            # a store that lost its manifest (a crash mid-write, a manual delete): rebuilt
            log.warning("%s: evidence store without a manifest; replacing it", target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        ondisk = isinstance(self.index, OnDiskIndex)
        try:
            if ondisk:  # its files are already on disk: linked (or copied) into place
                for name in ONDISK_FILES:
                    _link_or_copy(self.index.directory / name, tmp / name)
            else:
                faiss.write_index(self.index, str(tmp / INDEX_FILE))
            self.table.write_parquet(tmp / TABLE_FILE)
            files = {}
            for name in _store_files(self.index_type):
                path = tmp / name
                _fsync(path)
                files[name] = FileInfo(bytes=path.stat().st_size, sha256=sha256_file(path))
            manifest = self.manifest.model_copy(update={"files": files})
            (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
            _fsync(tmp / MANIFEST)
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.manifest = manifest
        if ondisk:  # from now on the saved files are the index
            self.index = OnDiskIndex.open(target)
            if self._temporary_dir is not None:
                self._temporary_dir()  # the finalizer: removes the scratch directory
                self._temporary_dir = None
        return target

    def _own_build_dir(self, directory: Path) -> None:
        """Remove a scratch build directory when this store is saved or collected."""
        self._temporary_dir = weakref.finalize(self, shutil.rmtree, directory, True)

    @classmethod
    def read_manifest(cls, directory: str | Path) -> StoreManifest:
        """The manifest of a saved store.

        Raises:
            FileNotFoundError: when ``directory`` does not exist.
            CorruptIndexError: when the manifest is missing, unreadable or of another
                schema version.
        """
        root = Path(directory).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"no evidence store at {root}")
        path = root / MANIFEST
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CorruptIndexError(
                f"{path} is missing: {root} is not a complete store", path
            ) from None
        except (OSError, ValueError) as exc:
            raise CorruptIndexError(f"{path} is not valid JSON ({exc})", path) from exc
        if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
            raise CorruptIndexError(f"{path} is not an evidence-store manifest", path)
        if raw.get("schema_version") != STORE_SCHEMA_VERSION:
            raise CorruptIndexError(
                f"{path} has schema version {raw.get('schema_version')!r}; this safescale "
                f"reads version {STORE_SCHEMA_VERSION}; rebuild the index",
                path,
            )
        try:
            return StoreManifest.model_validate(raw)
        except ValidationError as exc:
            raise CorruptIndexError(f"{path} is malformed: {exc}", path) from exc

    @classmethod
    def load(
        cls,
        directory: str | Path,
        corpus: Corpus | None = None,
        embedder: Embedder | None = None,
        rebuild_if_stale: bool = False,
        *,
        verify: bool = True,
        cache_dir: str | Path | None = None,
        show_progress: bool | None = None,
    ) -> EvidenceStore:
        """Load a saved store.

        Args:
            directory: the store directory.
            corpus: when given, its ``passages_hash`` must equal the recorded one.
            embedder: when given, its ``content_hash`` must equal the recorded one; it
                is used for text queries (otherwise the recorded embedder is loaded by
                name on the first text query).
            rebuild_if_stale: rebuild (with the recorded index type and parameters,
                reusing cached embeddings) and re-save instead of raising
                :class:`StaleIndexError`. Needs ``corpus``.
            verify: check the sha256 of every file against the manifest (sizes are
                always checked).
            cache_dir: embedding cache root for a rebuild.
            show_progress: progress bar for a rebuild.

        Raises:
            FileNotFoundError: when ``directory`` does not exist.
            StaleIndexError: when the corpus or embedder differs from the recorded one.
            CorruptIndexError: when a file is missing, truncated, altered or unreadable.
        """
        root = Path(directory).expanduser()
        manifest = cls.read_manifest(root)
        reasons = []
        if corpus is not None and corpus.passages_hash != manifest.corpus.passages_hash:
            reasons.append(
                f"corpus {corpus.name!r} has passages hash {corpus.passages_hash[:12]}, the "
                f"index was built from {manifest.corpus.name!r} with "
                f"{manifest.corpus.passages_hash[:12]}"
            )
        if embedder is not None and embedder.content_hash != manifest.embedder.content_hash:
            reasons.append(
                f"embedder {embedder.name!r} has hash {embedder.content_hash[:12]}, the index "
                f"was built with {manifest.embedder.name!r} ({manifest.embedder.content_hash[:12]})"
            )
        if reasons:
            if not rebuild_if_stale or corpus is None:
                hint = (
                    "pass the corpus to rebuild"
                    if rebuild_if_stale
                    else "rebuild it (rebuild_if_stale=True, or `safescale index build`)"
                )
                raise StaleIndexError(
                    f"index at {root} is stale: {'; '.join(reasons)}; {hint}", root
                )
            log.info("rebuilding stale index at %s: %s", root, "; ".join(reasons))
            if embedder is None:
                from safescale.models.embedder import load_embedder

                embedder = load_embedder(manifest.embedder.name)
            store = cls.build(
                corpus,
                embedder,
                manifest.index.type,
                cache_dir=cache_dir,
                show_progress=show_progress,
                **manifest.index.requested,
            )
            store.save(root)
            return store

        cls._check_files(root, manifest, verify)
        index_path = root / INDEX_FILE
        try:
            if manifest.index.type == "ivfpq_disk":
                index = OnDiskIndex.open(root)
            else:
                index = faiss.read_index(str(index_path))
        except (RuntimeError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            raise CorruptIndexError(
                f"{index_path} is not a readable FAISS index ({first_line})", index_path
            ) from exc
        if index.ntotal != manifest.passage_count or index.d != manifest.embedder.dimension:
            raise CorruptIndexError(
                f"{index_path} holds {index.ntotal} vectors of dimension {index.d}, the "
                f"manifest says {manifest.passage_count} of {manifest.embedder.dimension}",
                index_path,
            )
        prepare_index(index)
        table_path = root / TABLE_FILE
        passages = corpus.passages if corpus is not None else None
        try:
            table = PassageTable.read_parquet(table_path, passages)
        except (OSError, ValueError) as exc:  # pyarrow errors derive from these
            raise CorruptIndexError(f"{table_path} is unreadable ({exc})", table_path) from exc
        if len(table) != manifest.passage_count:
            raise CorruptIndexError(
                f"{table_path} has {len(table)} rows, the manifest says {manifest.passage_count}",
                table_path,
            )
        store = cls(index, table, manifest, None)
        if embedder is not None:
            store._check_embedder(embedder, root)
            store.embedder = embedder
        return store

    @staticmethod
    def _check_files(root: Path, manifest: StoreManifest, verify: bool) -> None:
        """Sizes always; sha256 with ``verify`` (files above 1 GiB, the bulk data of an
        ``ivfpq_disk`` index, by size only: hashing tens of GB on every open is not a
        check a search can wait for)."""
        for name in _store_files(manifest.index.type):
            info = manifest.files.get(name)
            path = root / name
            if info is None:
                raise CorruptIndexError(f"{root / MANIFEST} does not list {name}", path)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise CorruptIndexError(f"{path} is missing", path) from None
            if size != info.bytes:
                raise CorruptIndexError(
                    f"{path} has {size} bytes, expected {info.bytes} (truncated or altered)",
                    path,
                )
            if verify and size <= _VERIFY_LIMIT and sha256_file(path) != info.sha256:
                raise CorruptIndexError(
                    f"{path} does not match its recorded sha256 (corrupted or altered)", path
                )


_VERIFY_LIMIT = 1 << 30


def _store_files(index_type: str) -> tuple[str, ...]:
    """The data files of a saved store of this index type (besides the manifest)."""
    if index_type == "ivfpq_disk":
        return (*ONDISK_FILES, TABLE_FILE)
    return (INDEX_FILE, TABLE_FILE)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _new_manifest(
    table: PassageTable,
    index_type: str,
    resolved: dict[str, int],
    requested: dict[str, int],
    corpus_name: str,
    passages_hash: str,
    embedder_name: str,
    embedder_hash: str,
    dimension: int,
) -> StoreManifest:
    reference = table.reference_ordinal
    return StoreManifest(
        corpus=CorpusInfo(name=corpus_name, passages_hash=passages_hash),
        embedder=EmbedderInfo(name=embedder_name, content_hash=embedder_hash, dimension=dimension),
        index=IndexInfo(
            type=index_type,
            params=resolved,
            requested={k: int(v) for k, v in requested.items()},
            faiss_version=faiss.__version__,
        ),
        passage_count=len(table),
        reference_date=dt.date.fromordinal(reference) if reference else None,
    )


def _knn(
    queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, want: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``want`` of ``queries`` among ``vectors`` (ids ``rows``).

    FAISS' kernels rather than a numpy matmul: after FAISS' OpenMP regions, BLAS threads
    contend with spinning OpenMP workers and a small matmul can take 20x longer.
    """
    want = min(want, len(rows))
    scores, cols = faiss.knn(queries, vectors, want, metric=faiss.METRIC_INNER_PRODUCT)
    return _sorted(scores.astype(np.float32), np.asarray(rows, dtype=np.int64)[cols])


def _sorted(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by descending score, ties by ascending id."""
    if scores.size == 0:
        return scores, ids
    order = np.stack([np.lexsort((ids[i], -scores[i])) for i in range(len(scores))])
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


@contextmanager
def _omp_threads(threads: int | None) -> Iterator[None]:
    """Limit FAISS' OpenMP threads for the calling thread (None: leave as is)."""
    if threads is None:
        yield
        return
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _cache_root() -> Path:
    # Imported lazily: importing safescale.models pulls in torch.
    from safescale.models.cache import cache_root

    return cache_root()


def sha256_file(path: Path) -> str:
    """sha256 of one file (streamed)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, replacing a previous ``target`` directory."""
    try:
        source.rename(target)
        return
    except OSError:
        if not target.exists():
            raise
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    target.rename(old)
    try:
        source.rename(target)
    except OSError:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


class _EmbedProgress:
    """A rich progress bar over the texts being embedded (silent when not shown)."""

    def __init__(self, label: str, show: bool | None) -> None:
        from rich.console import Console

        console = Console(stderr=True)
        self.show = console.is_terminal if show is None else show
        self.label = label
        self.console = console
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _EmbedProgress:
        if self.show:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("embedding {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
        return self

    def update(self, done: int, total: int) -> None:
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task(self.label, total=total)
        self._progress.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


class _BuildProgress(_EmbedProgress):
    """One bar per phase of an on-disk build: embedding + writing the vectors, training,
    adding the chunks, merging the inverted lists."""

    _LABELS: ClassVar[dict[str, str]] = {
        "vectors": "embedding + writing vectors",
        "train": "training IVF-PQ",
        "add": "adding chunks",
        "merge": "merging inverted lists",
    }

    def __init__(self, label: str, show: bool | None) -> None:
        super().__init__(label, show)
        self._tasks: dict[str, Any] = {}

    def update(self, phase: str, done: int, total: int) -> None:  # type: ignore[override]
        if self._progress is None:
            return
        if phase not in self._tasks:
            text = f"{self.label}: {self._LABELS.get(phase, phase)}"
            self._tasks[phase] = self._progress.add_task(text, total=total)
        self._progress.update(self._tasks[phase], completed=done, total=total)

    def __enter__(self) -> _BuildProgress:
        from rich.progress import TextColumn

        super().__enter__()
        if self._progress is not None:
            self._progress.columns = (
                TextColumn("{task.description}"),
                *self._progress.columns[1:],
            )
        return self


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "corpus"


def store_dir(
    corpus: Corpus, embedder: Embedder, index_type: str, cache_dir: str | Path | None = None
) -> Path:
    """Where :func:`open_store` keeps the store of (corpus, embedder, index type).

    ``<cache>/indexes/<corpus name>-<passages_hash[:12]>-<index type>-<embedder hash[:8]>``
    with ``<cache>`` = ``cache_dir`` or ``$SAFESCALE_CACHE`` or ``~/.cache/safescale``.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    name = (
        f"{_slug(corpus.name)}-{corpus.passages_hash[:12]}-{index_type}-{embedder.content_hash[:8]}"
    )
    return root / "indexes" / name


def open_store(
    corpus: Corpus,
    embedder: Embedder | None = None,
    index_type: IndexType = "flat",
    cache_dir: str | Path | None = None,
    *,
    show_progress: bool | None = None,
    **params: int,
) -> EvidenceStore:
    """Load the cached store of a corpus, or build and cache it.

    The store lives in :func:`store_dir`. A cached store whose build parameters differ
    from ``params`` (ignoring the search-time ``nprobe``/``ef_search``, which are
    simply applied), or that is corrupt, is rebuilt (cached embeddings make that
    cheap) and saved over the old one.

    Args:
        corpus: the corpus.
        embedder: the embedder (default: the bundled all-MiniLM-L6-v2).
        index_type: ``"flat"``, ``"ivf"`` or ``"hnsw"``.
        cache_dir: cache root (default ``$SAFESCALE_CACHE`` or ``~/.cache/safescale``).
        show_progress: progress bar while embedding.
        **params: index parameters.
    """
    if embedder is None:
        from safescale.models.embedder import load_embedder

        embedder = load_embedder()
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_root()
    directory = store_dir(corpus, embedder, index_type, root)
    build_params = {k: v for k, v in params.items() if k not in SEARCH_PARAMS}
    search_params = {k: v for k, v in params.items() if k in SEARCH_PARAMS}
    if (directory / MANIFEST).exists():
        try:
            store = EvidenceStore.load(directory, corpus, embedder)
        except (CorruptIndexError, StaleIndexError) as exc:
            log.warning("rebuilding cached index: %s", exc)
        else:
            recorded = {
                k: v for k, v in store.manifest.index.requested.items() if k not in SEARCH_PARAMS
            }
            if recorded == build_params:
                if search_params:
                    store.set_search_params(**search_params)
                return store
    elif directory.is_dir() and any(directory.iterdir()):
        log.warning("rebuilding cached index: %s has lost its %s", directory, MANIFEST)
        shutil.rmtree(directory)
    store = EvidenceStore.build(
        corpus, embedder, index_type, cache_dir=root, show_progress=show_progress, **params
    )
    store.save(directory)  # an ivfpq_disk build directory is moved in and removed
    return store
