"""An evidence index that does not fit in memory: ``index_type: ivfpq_disk``.

MedRAG's corpora run to tens of millions of passages (PubMed 23.9M snippets): at
d=384 their float32 embeddings alone are 37 GB. This index keeps in memory only what a
search needs:

* **IVF-PQ codes in on-disk inverted lists** (FAISS ``OnDiskInvertedLists``, the
  ``index.ivfdata`` file, memory-mapped): ``m`` bytes per passage (48 by default, i.e.
  8 dimensions per byte) plus its 8-byte id. A search reads the ``nprobe`` probed lists;
* **the exact unit vectors in a flat file** (``vectors.f32``, row ``i`` = passage ``i``),
  read row by row with ``pread`` (never mapped, so no page of it counts as resident
  memory): the ``rerank x k`` best candidates of the PQ search are re-scored with their
  exact inner product, so recall is that of the coarse search, not of the 48-byte codes;
  filtered searches over few passages and ``reconstruct`` read their rows from it too;
* the coarse quantizer (``nlist`` centroids) and the PQ tables (a few MB).

It is **built in chunks**: vectors arrive block by block (embedded per chunk of
passages) and are appended to ``vectors.f32`` with plain writes (never mapped while
building, so they never count as resident memory); the coarse quantizer and the PQ are
trained on a seeded sample of ``train_size`` rows read back with ``pread``; then the file
is read again chunk by chunk, each chunk's codes go to a shard index on disk, and the
shards are merged into the on-disk inverted lists (``faiss.contrib.ondisk``). Peak
memory is the training sample plus one chunk, independent of the corpus size.

Parameters (:func:`resolve_ondisk_params`): ``nlist`` (default the power of two nearest
``4 * sqrt(n)``, at most ``n // 39``), ``m`` (PQ bytes per vector, default 48; must
divide the dimension), ``nbits`` (8), ``nprobe`` (default ``max(16, nlist // 16)``: at
50k structured synthetic vectors, 1/32 of the lists gave recall@10 0.89, 1/16 gave 0.96),
``rerank`` (exact re-scoring of ``rerank * k`` candidates, default 50; 0 returns the PQ
scores), ``train_size`` (default ``min(n, max(40 * nlist, 65536))``: FAISS asks for 39
training points per centroid), ``niter`` (10),
``chunk`` (vectors per add chunk, 131072), ``seed`` (0). ``nprobe`` and ``rerank`` are
search-time settings.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

__all__ = [
    "ONDISK_FILES",
    "ONDISK_PARAMS",
    "ONDISK_SEARCH_PARAMS",
    "OnDiskIndex",
    "build_ondisk_index",
    "read_rows",
    "resolve_ondisk_params",
]

INDEX_NAME = "index.faiss"
IVFDATA_NAME = "index.ivfdata"
VECTORS_NAME = "vectors.f32"
#: The files of an on-disk index (all in one directory).
ONDISK_FILES = (INDEX_NAME, IVFDATA_NAME, VECTORS_NAME)
ONDISK_PARAMS = frozenset(
    {"nlist", "m", "nbits", "nprobe", "rerank", "train_size", "niter", "chunk", "seed"}
)
ONDISK_SEARCH_PARAMS = frozenset({"nprobe", "rerank"})

#: ``progress(phase, done, total)``; phases: vectors, train, add, merge.
Progress = Callable[[str, int, int], None]


def resolve_ondisk_params(n: int, d: int, params: dict[str, Any]) -> dict[str, int]:
    """Complete user parameters with the defaults for ``n`` vectors of dimension ``d``.

    Raises:
        ValueError: an unknown parameter, a non-positive value, or ``m`` not dividing
            ``d``.
    """
    unknown = set(params) - ONDISK_PARAMS
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {sorted(unknown)} for index type 'ivfpq_disk' "
            f"(allowed: {sorted(ONDISK_PARAMS)})"
        )
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"parameter {name} must be an integer, got {value!r}")
        if value < (0 if name in ("seed", "rerank") else 1):
            raise ValueError(f"parameter {name} must be positive, got {value}")
    out = {k: int(v) for k, v in params.items()}
    if "nlist" not in out:
        target = 4.0 * math.sqrt(max(n, 1))
        out["nlist"] = max(1, min(2 ** round(math.log2(target)), n // 39))
    out.setdefault("m", 48 if d % 48 == 0 else _divisor_near(d, d // 8))
    if d % out["m"]:
        raise ValueError(f"parameter m={out['m']} must divide the dimension {d}")
    out.setdefault("nbits", 8)
    out.setdefault("nprobe", max(16, out["nlist"] // 16))
    out["nprobe"] = min(out["nprobe"], out["nlist"])
    out.setdefault("rerank", 50)
    out.setdefault("train_size", min(n, max(40 * out["nlist"], 65536)))
    out.setdefault("niter", 10)
    out.setdefault("chunk", 131072)
    out.setdefault("seed", 0)
    return out


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence FAISS' C-level prints ("resizing ...", "IO_FLAG_ONDISK_SAME_DIR: updating
    ...") for the duration (they go to file descriptor 1, not to ``sys.stdout``)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real stdout (e.g. captured): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _divisor_near(d: int, target: int) -> int:
    divisors = [m for m in range(1, d + 1) if d % m == 0]
    return min(divisors, key=lambda m: (abs(m - target), m))


class OnDiskIndex:
    """An IVF-PQ index over on-disk inverted lists with exact re-ranking from the
    vectors file, read with ``pread`` (see the module docs). Open one with :meth:`open`.

    Attributes:
        directory: the directory holding :data:`ONDISK_FILES`.
        index: the FAISS ``IndexIVFPQ`` (inverted lists memory-mapped).
        ntotal: vectors indexed.
        d: their dimension.
    """

    def __init__(self, directory: Path, index: faiss.Index, rows: int) -> None:
        self._fd: int | None = None
        self.directory = directory
        self.index = index
        self.ntotal = int(index.ntotal)
        self.d = int(index.d)
        if rows != self.ntotal:
            raise ValueError(
                f"{directory / VECTORS_NAME} holds {rows} vectors of dimension {self.d}, "
                f"the index {self.ntotal}"
            )
        # Read with pread, never mapped: a mapped file's pages count as resident memory
        # of the process once touched (plus the kernel's fault-around of neighbouring
        # pages), which at 5M passages grew a search process to 6 GB; pages read with
        # pread stay in the page cache, which the kernel reclaims under pressure.
        self._fd = os.open(directory / VECTORS_NAME, os.O_RDONLY)

    @classmethod
    def open(cls, directory: str | Path) -> OnDiskIndex:
        """Open a built index (the inverted lists are memory-mapped; the vectors file is
        read row by row with ``pread``).

        Raises:
            RuntimeError: FAISS cannot read the index (message from FAISS).
            ValueError: the vectors file does not match the index.
        """
        directory = Path(directory)
        with _quiet_stdout():
            index = faiss.read_index(str(directory / INDEX_NAME), faiss.IO_FLAG_ONDISK_SAME_DIR)
        d = int(index.d)
        size = (directory / VECTORS_NAME).stat().st_size
        if size % (4 * d):
            raise ValueError(f"{directory / VECTORS_NAME}: {size} bytes is not rows of {d} floats")
        return cls(directory, index, size // (4 * d))

    def close(self) -> None:
        """Close the vectors file (the index is unusable afterwards)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()

    def reconstruct_batch(self, rows: np.ndarray) -> np.ndarray:
        """The exact stored vectors of ``rows`` (read from the vectors file; runs of
        consecutive rows in one read)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.d), dtype=np.float32)
        if self._fd is None:
            raise ValueError(f"{self.directory}: the on-disk index is closed")
        if rows.min() < 0 or rows.max() >= self.ntotal:
            raise IndexError(f"rows outside 0..{self.ntotal - 1}")
        return read_rows(self._fd, rows, self.d, self.directory / VECTORS_NAME)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        nprobe: int,
        rerank: int,
        selector: faiss.IDSelector | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product: ``rerank * k`` PQ candidates from ``nprobe`` lists,
        re-scored exactly (``rerank = 0``: the PQ scores). Missing results have id -1."""
        fetch = max(k, k * rerank) if rerank else k
        params = faiss.SearchParametersIVF(nprobe=min(nprobe, self.index.nlist))
        if selector is not None:
            params.sel = selector
        scores, ids = self.index.search(queries, fetch, params=params)
        if not rerank:
            return scores, ids
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        for i in range(len(queries)):
            found = ids[i][ids[i] >= 0]
            if not found.size:
                continue
            exact = self.reconstruct_batch(found) @ queries[i]
            best = np.lexsort((found, -exact))[:k]
            out_scores[i, : len(best)] = exact[best]
            out_ids[i, : len(best)] = found[best]
        return out_scores, out_ids


def read_rows(handle: int, rows: np.ndarray, d: int, path: Path) -> np.ndarray:
    """Rows ``rows`` (in that order, repeats allowed) of a file of ``d``-float rows, read
    with ``pread`` (not mapped: no resident pages remain); each run of consecutive rows
    is one read.

    Raises:
        ValueError: the file ends before a requested row (named with ``path``).
    """
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), d), dtype=np.float32)
    if not len(rows):
        return out
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    width = 4 * d
    breaks = np.flatnonzero(np.diff(ordered) > 1) + 1
    for start, stop in zip(
        np.concatenate(([0], breaks)), np.concatenate((breaks, [len(ordered)])), strict=True
    ):
        first, last = int(ordered[start]), int(ordered[stop - 1])
        data = os.pread(handle, (last - first + 1) * width, first * width)
        if len(data) != (last - first + 1) * width:
            raise ValueError(f"{path}: ends before row {last} (file truncated?)")
        block = np.frombuffer(data, dtype=np.float32).reshape(-1, d)
        out[order[start:stop]] = block[ordered[start:stop] - first]
    return out


def _read_block(handle: int, start: int, count: int, d: int) -> np.ndarray:
    width = 4 * d
    data = os.pread(handle, count * width, start * width)
    return np.frombuffer(data, dtype=np.float32).reshape(count, d).copy()


def build_ondisk_index(
    directory: str | Path,
    chunks: Iterable[np.ndarray],
    n: int,
    d: int,
    params: dict[str, Any] | None = None,
    *,
    progress: Progress | None = None,
) -> OnDiskIndex:
    """Build an on-disk IVF-PQ index from vectors arriving in chunks (see module docs).

    Args:
        directory: where to write :data:`ONDISK_FILES` (created; must not hold them).
        chunks: ``(rows, d)`` arrays, ``n`` rows in all, in passage order; normalized
            to unit length here.
        n: total rows.
        d: dimension.
        params: index parameters (:func:`resolve_ondisk_params`).
        progress: called as ``progress(phase, done, total)``.

    Raises:
        ValueError: chunks of the wrong shape or count, ``n`` smaller than ``nlist``,
            invalid parameters.
    """
    resolved = resolve_ondisk_params(n, d, dict(params or {}))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if any((directory / name).exists() for name in ONDISK_FILES):
        raise ValueError(f"{directory} already holds an on-disk index")
    nlist = resolved["nlist"]
    if n < max(nlist, 2 ** resolved["nbits"]):
        raise ValueError(
            f"ivfpq_disk with nlist={nlist} and {2 ** resolved['nbits']} PQ centroids needs "
            f"at least {max(nlist, 2 ** resolved['nbits'])} vectors, got {n}"
        )
    report = progress or (lambda phase, done, total: None)
    work = directory / f".build-{uuid.uuid4().hex[:8]}"
    try:
        _write_vectors(directory / VECTORS_NAME, chunks, n, d, report)
        work.mkdir()
        _index_vectors(directory, work, n, d, resolved, report)
    except BaseException:  # nothing half-built is left behind
        for name in ONDISK_FILES:
            (directory / name).unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return OnDiskIndex.open(directory)


def _write_vectors(
    path: Path, chunks: Iterable[np.ndarray], n: int, d: int, report: Progress
) -> None:
    """Append the normalized chunks to the vectors file with plain writes."""
    written = 0
    with path.open("wb") as handle:
        for block in chunks:
            block = np.array(block, dtype=np.float32, order="C")  # a copy: normalized here
            if block.ndim != 2 or block.shape[1] != d:
                raise ValueError(f"expected chunks of shape (rows, {d}), got {block.shape}")
            faiss.normalize_L2(block)
            handle.write(memoryview(block))  # no second copy of the chunk
            written += len(block)
            report("vectors", written, n)
        handle.flush()
        os.fsync(handle.fileno())
    if written != n:
        raise ValueError(f"expected {n} vectors, the chunks held {written}")


def _index_vectors(
    directory: Path, work: Path, n: int, d: int, resolved: dict[str, int], report: Progress
) -> None:
    """Train on a sample of the vectors file, add it chunk by chunk into shards, merge
    the shards into the on-disk inverted lists."""
    nlist = resolved["nlist"]
    fd = os.open(directory / VECTORS_NAME, os.O_RDONLY)
    try:
        rng = np.random.default_rng(resolved["seed"])
        size = min(n, resolved["train_size"])
        rows = np.arange(n) if size == n else np.sort(rng.choice(n, size, replace=False))
        report("train", 0, 1)
        sample = read_rows(fd, rows, d, directory / VECTORS_NAME)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(
            quantizer, d, nlist, resolved["m"], resolved["nbits"], faiss.METRIC_INNER_PRODUCT
        )
        index.cp.niter = resolved["niter"]
        index.cp.seed = resolved["seed"]
        index.cp.max_points_per_centroid = max(1, math.ceil(size / nlist))
        index.pq.cp.seed = resolved["seed"]
        index.train(sample)
        del sample
        report("train", 1, 1)
        trained = work / "trained.index"
        faiss.write_index(index, str(trained))
        shards = []
        step = resolved["chunk"]
        for number, start in enumerate(range(0, n, step)):
            count = min(step, n - start)
            shard = faiss.read_index(str(trained))
            shard.add_with_ids(
                _read_block(fd, start, count, d), np.arange(start, start + count, dtype=np.int64)
            )
            path = work / f"shard-{number:05d}.index"
            faiss.write_index(shard, str(path))
            del shard
            shards.append(str(path))
            report("add", start + count, n)
    finally:
        os.close(fd)
    report("merge", 0, 1)
    from faiss.contrib.ondisk import merge_ondisk

    merged = faiss.read_index(str(trained))
    with _quiet_stdout():
        merge_ondisk(merged, shards, str(directory / IVFDATA_NAME))
    merged.nprobe = resolved["nprobe"]
    faiss.write_index(merged, str(directory / INDEX_NAME))
    del merged
    report("merge", 1, 1)
