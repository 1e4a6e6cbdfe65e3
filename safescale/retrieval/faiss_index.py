"""FAISS index construction, parameters and filtered search.

Three index types, all over inner product of unit vectors (= cosine similarity):

``flat``
    ``IndexFlatIP``: exact search; the reference. No parameters.
``ivf``
    ``IndexIVFFlat``: k-means partitions, search visits the ``nprobe`` nearest lists.
    Parameters: ``nlist`` (default: the power of two nearest ``2 * sqrt(n)``, at most
    ``n // 39``), ``nprobe`` (default ``max(nlist // 16, min(nlist, 16))``, i.e. about
    6% of the lists),
    ``train_size`` (k-means sample, default ``min(n, 64 * nlist)``), ``niter`` (k-means
    iterations, default 10), ``seed`` (default 0).
``hnsw``
    ``IndexHNSWFlat``: a navigable small-world graph. Parameters: ``m`` (links per
    node, default 16), ``ef_construction`` (default 64), ``ef_search`` (default 128 up
    to 10k passages, doubling with every tenfold growth: 256 at 100k, 512 at 1M,
    capped at 1024).

The search-effort defaults are set from ``benchmarks/bench_retrieval.py`` so that
recall@10 against exact search stays near or above 0.95 on structured synthetic
embeddings at 10^4-10^6 passages; tune them per corpus with
:meth:`EvidenceStore.set_search_params`.

``ivfpq_disk``
    IVF-PQ codes in on-disk inverted lists plus memory-mapped exact vectors for
    re-ranking, built in chunks: for corpora whose embeddings do not fit in memory
    (:mod:`safescale.retrieval.ondisk`, which lists its parameters).

Search-time effort (``nprobe``, ``ef_search``) is passed per call through FAISS
``SearchParameters``, together with an ``IDSelectorBitmap`` for metadata filters, so
concurrent searches with different settings never interfere.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import faiss
import numpy as np

from safescale.retrieval.ondisk import ONDISK_PARAMS, OnDiskIndex, resolve_ondisk_params

__all__ = [
    "INDEX_TYPES",
    "SEARCH_PARAMS",
    "IndexType",
    "build_faiss_index",
    "faiss_search",
    "prepare_index",
    "reconstruct",
    "resolve_params",
]

IndexType = Literal["flat", "ivf", "hnsw", "ivfpq_disk"]
INDEX_TYPES: tuple[str, ...] = ("flat", "ivf", "hnsw", "ivfpq_disk")

_PARAM_NAMES: dict[str, frozenset[str]] = {
    "flat": frozenset(),
    "ivf": frozenset({"nlist", "nprobe", "train_size", "niter", "seed"}),
    "hnsw": frozenset({"m", "ef_construction", "ef_search"}),
    "ivfpq_disk": ONDISK_PARAMS,
}
# Parameters that only change search effort (may differ from the build parameters).
SEARCH_PARAMS: frozenset[str] = frozenset({"nprobe", "ef_search", "rerank"})


def _check_type(index_type: str) -> None:
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; choose one of {INDEX_TYPES}")


def resolve_params(index_type: str, n: int, params: dict[str, Any], d: int = 384) -> dict[str, int]:
    """Complete user parameters with the defaults for ``n`` vectors (of dimension ``d``,
    which only the ``ivfpq_disk`` defaults depend on).

    Raises:
        ValueError: on an unknown index type, an unknown parameter (named in the
            message) or a non-positive value.
    """
    _check_type(index_type)
    if index_type == "ivfpq_disk":
        return resolve_ondisk_params(n, d, params)
    unknown = set(params) - _PARAM_NAMES[index_type]
    if unknown:
        allowed = sorted(_PARAM_NAMES[index_type]) or "none"
        raise ValueError(
            f"unknown parameter(s) {sorted(unknown)} for index type {index_type!r} "
            f"(allowed: {allowed})"
        )
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"parameter {name} must be an integer, got {value!r}")
        if value < (0 if name == "seed" else 1):
            raise ValueError(f"parameter {name} must be positive, got {value}")
    resolved = {k: int(v) for k, v in params.items()}
    if index_type == "ivf":
        if "nlist" not in resolved:
            target = 2.0 * math.sqrt(max(n, 1))
            nlist = 2 ** round(math.log2(target))
            resolved["nlist"] = max(1, min(nlist, n // 39))
        nlist = resolved["nlist"]
        resolved.setdefault("nprobe", max(nlist // 16, min(nlist, 16)))
        resolved["nprobe"] = min(resolved["nprobe"], nlist)
        resolved.setdefault("train_size", min(n, 64 * nlist))
        resolved.setdefault("niter", 10)
        resolved.setdefault("seed", 0)
    elif index_type == "hnsw":
        resolved.setdefault("m", 16)
        resolved.setdefault("ef_construction", 64)
        growth = max(0, round(math.log10(max(n, 1)) - 4))
        resolved.setdefault("ef_search", min(1024, 128 * 2**growth))
    return resolved


def build_faiss_index(index_type: str, vectors: np.ndarray, params: dict[str, int]) -> faiss.Index:
    """Build an inner-product index over ``vectors`` (ids = row numbers).

    Args:
        index_type: ``"flat"``, ``"ivf"`` or ``"hnsw"``.
        vectors: ``(n, d)`` float32 unit vectors.
        params: resolved parameters (see :func:`resolve_params`).
    """
    _check_type(index_type)
    if index_type == "ivfpq_disk":
        raise ValueError("an ivfpq_disk index is built on disk: see build_ondisk_index")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    if index_type == "flat":
        index: faiss.Index = faiss.IndexFlatIP(d)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, params["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
        index.hnsw.efSearch = params["ef_search"]
    else:
        if n < params["nlist"]:
            raise ValueError(f"ivf with nlist={params['nlist']} needs at least that many vectors")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, params["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = params["niter"]
        index.cp.seed = params["seed"]
        index.cp.max_points_per_centroid = max(1, math.ceil(params["train_size"] / params["nlist"]))
        rng = np.random.default_rng(params["seed"])
        sample_size = min(n, params["train_size"])
        sample = (
            vectors
            if sample_size == n
            else vectors[np.sort(rng.choice(n, sample_size, replace=False))]
        )
        index.train(sample)
        index.nprobe = params["nprobe"]
    if n:
        index.add(vectors)
    prepare_index(index)
    return index


def prepare_index(index: faiss.Index | OnDiskIndex) -> None:
    """Make a built or loaded index ready for filtered search and reconstruction."""
    if isinstance(index, OnDiskIndex):
        return  # reconstructs from its vectors file; its lists stay on disk
    ivf = _as_ivf(index)
    if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
        ivf.make_direct_map()


def _as_ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def faiss_search(
    index: faiss.Index,
    index_type: str,
    params: dict[str, int],
    queries: np.ndarray,
    k: int,
    bitmap: np.ndarray | None = None,
    effort: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """One FAISS search with per-call parameters and an optional filter bitmap.

    Args:
        index: the index.
        index_type: its type.
        params: resolved parameters (``nprobe``/``ef_search`` are read here).
        queries: ``(nq, d)`` float32 unit vectors.
        k: results per query.
        bitmap: ``np.packbits(mask, bitorder="little")`` of the rows allowed, or None.
        effort: multiplier on ``nprobe``/``ef_search`` (used to retry hard queries).

    Returns:
        ``(scores, ids)`` of shape ``(nq, k)``; missing results have id -1.
    """
    selector = None
    if bitmap is not None:
        selector = faiss.IDSelectorBitmap(index.ntotal, faiss.swig_ptr(bitmap))
    if index_type == "ivfpq_disk":
        scores, ids = index.search(
            queries, k, params["nprobe"] * effort, params["rerank"], selector
        )
        del selector, bitmap
        return scores, ids
    if index_type == "ivf":
        nlist = _as_ivf(index).nlist
        search_params: faiss.SearchParameters = faiss.SearchParametersIVF(
            nprobe=min(nlist, params["nprobe"] * effort)
        )
    elif index_type == "hnsw":
        search_params = faiss.SearchParametersHNSW(efSearch=max(k, params["ef_search"] * effort))
    else:
        search_params = faiss.SearchParameters()
    if selector is not None:
        search_params.sel = selector
    scores, ids = index.search(queries, k, params=search_params)
    # ``bitmap`` and ``selector`` must outlive the search: FAISS holds raw pointers.
    del selector, bitmap
    return scores, ids


def reconstruct(index: faiss.Index, rows: np.ndarray) -> np.ndarray:
    """The stored vectors of ``rows`` (int64), as a ``(len(rows), d)`` float32 array."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return index.reconstruct_batch(rows)  # OnDiskIndex: the exact rows of its vectors file
