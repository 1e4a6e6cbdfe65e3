"""The on-disk index (``ivfpq_disk``): chunked build, exact re-ranking from the
memory-mapped vectors, and the evidence store built, saved, loaded and searched with
it (hashing embedder, no model)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from safescale.retrieval import EvidenceStore, SearchFilters, open_store
from safescale.retrieval.errors import CorruptIndexError
from safescale.retrieval.ondisk import (
    ONDISK_FILES,
    OnDiskIndex,
    build_ondisk_index,
    read_rows,
    resolve_ondisk_params,
)
from safescale.retrieval.testing import HashingEmbedder, make_corpus, make_passage


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(n // 100, 8), d)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, d))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth, strict=False)])
    )


def test_defaults_follow_the_corpus_size():
    small = resolve_ondisk_params(50_000, 384, {})
    large = resolve_ondisk_params(5_000_000, 384, {})
    assert (small["nlist"], small["nprobe"], small["m"]) == (1024, 64, 48)
    assert (large["nlist"], large["nprobe"]) == (8192, 512)
    assert resolve_ondisk_params(10_000, 64, {})["m"] == 8  # 8 dimensions per code byte
    with pytest.raises(ValueError, match="must divide the dimension"):
        resolve_ondisk_params(10_000, 64, {"m": 48})
    with pytest.raises(ValueError, match="unknown parameter"):
        resolve_ondisk_params(10_000, 64, {"ef_search": 4})


def test_chunked_build_reranks_exactly_and_reopens_elsewhere(tmp_path):
    n, d = 6000, 64
    data = _clustered(n, d, 0)
    chunks = [data[i : i + 700] * 3.0 for i in range(0, n, 700)]  # not unit length
    index = build_ondisk_index(tmp_path / "a", chunks, n, d, {"chunk": 1000})
    assert index.ntotal == n and index.index.nlist == resolve_ondisk_params(n, d, {})["nlist"]
    assert {p.name for p in (tmp_path / "a").iterdir()} == set(ONDISK_FILES)  # no shards left
    rows = np.array([4321, 7, 999])
    assert np.allclose(index.reconstruct_batch(rows), data[rows], atol=1e-6)
    queries = _clustered(100, d, 1)
    _, truth = faiss.knn(queries, data, 10, metric=faiss.METRIC_INNER_PRODUCT)
    params = resolve_ondisk_params(n, d, {})
    scores, ids = index.search(queries, 10, params["nprobe"], params["rerank"])
    assert _recall(ids, truth) >= 0.9
    exact = np.einsum("qd,qkd->qk", queries, data[ids])
    assert np.allclose(scores, exact, atol=1e-5)  # re-ranked scores are exact products
    _, pq_only = index.search(queries, 10, params["nprobe"], 0)
    assert _recall(pq_only, truth) < _recall(ids, truth)  # the codes alone are lossy
    shutil.move(tmp_path / "a", tmp_path / "b")  # the lists are found beside the index
    moved = OnDiskIndex.open(tmp_path / "b")
    _, again = moved.search(queries, 10, params["nprobe"], params["rerank"])
    assert np.array_equal(again, ids)


def test_exact_rows_are_read_not_mapped(tmp_path):
    """Re-scoring reads rows with pread: runs, repeats and any order come back exact, no
    page of the vectors file is mapped into the process, and bad rows are refused."""
    n, d = 3000, 32
    data = _clustered(n, d, 2)
    index = build_ondisk_index(tmp_path / "a", [data], n, d, {"nlist": 16})
    rows = np.array([5, 6, 7, 2999, 5, 0, 1, 1500, 7])  # a run, repeats, both ends
    got = index.reconstruct_batch(rows)
    # the stored rows are the built vectors (re-normalised: float rounding only), in order
    assert np.allclose(got, data[rows], atol=1e-6)
    assert np.array_equal(got[[0, 4]], got[[4, 0]]) and np.array_equal(got[2], got[8])
    assert not np.allclose(got[3], got[5])
    index.search(_clustered(20, d, 3), 5, 4, 10)
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert "vectors.f32" not in maps.read_text()
    with pytest.raises(IndexError, match="rows outside"):
        index.reconstruct_batch(np.array([n]))
    index.close()
    with pytest.raises(ValueError, match="closed"):
        index.reconstruct_batch(np.array([0]))
    with (tmp_path / "short.f32").open("wb") as handle:
        handle.write(data[:10].tobytes())
    fd = os.open(tmp_path / "short.f32", os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match=r"short\.f32: ends before row 12"):
            read_rows(fd, np.array([3, 12]), d, tmp_path / "short.f32")
    finally:
        os.close(fd)


def test_build_checks_its_input(tmp_path):
    data = _clustered(3000, 32, 0)
    with pytest.raises(ValueError, match="expected 4000 vectors"):
        build_ondisk_index(tmp_path / "x", [data], 4000, 32)
    assert not any((tmp_path / "x").glob("*.f32"))  # nothing half-built left behind
    with pytest.raises(ValueError, match="needs at least"):
        build_ondisk_index(tmp_path / "y", [data[:100]], 100, 32)


def _passages(n: int):
    topics = ["lung", "liver", "kidney", "thyroid"]
    return [
        make_passage(
            f"p{i:05d}",
            f"{topics[i % 4]} finding number {i} with follow-up advice {i % 37} and "
            f"size {i % 11} mm in segment {i % 7}",
            level=1 + i % 4,
            topic=topics[i % 4],
        )
        for i in range(n)
    ]


def test_store_with_the_on_disk_index_builds_in_chunks_saves_and_loads(tmp_path):
    corpus = make_corpus(_passages(3000), "ondisk-corpus")
    embedder = HashingEmbedder(dimension=64)
    store = open_store(corpus, embedder, "ivfpq_disk", tmp_path, chunk=1000)
    assert store.index_type == "ivfpq_disk" and len(store) == 3000
    assert embedder.texts_encoded == 3000 and embedder.calls >= 3  # chunk by chunk
    saved = Path(store.index.directory)
    assert {p.name for p in saved.iterdir()} >= {*ONDISK_FILES, "manifest.json"}
    assert not list((tmp_path / "indexes").glob(".building-*"))  # scratch dir moved in
    flat = EvidenceStore.build(corpus, embedder, "flat", use_cache=False)
    queries = [f"{t} finding follow-up advice {i}" for t in ("lung", "kidney") for i in range(5)]
    overlap = [
        len({h.passage_id for h in a} & {h.passage_id for h in b}) / 10
        for a, b in zip(store.search(queries, 10), flat.search(queries, 10), strict=False)
    ]
    assert np.mean(overlap) >= 0.9
    # a filter passing few passages is answered exactly from the memory-mapped vectors
    few = SearchFilters(topics=frozenset({"thyroid"}), min_grade_level=1)
    assert [h.passage_id for h in store.search(queries[0], 5, few)] == [
        h.passage_id for h in flat.search(queries[0], 5, few)
    ]
    loaded = EvidenceStore.load(saved, corpus, embedder)
    assert [h.passage_id for h in loaded.search(queries[3], 10)] == [
        h.passage_id for h in store.search(queries[3], 10)
    ]
    before = embedder.texts_encoded
    reopened = open_store(corpus, embedder, "ivfpq_disk", tmp_path, chunk=1000, nprobe=4)
    assert reopened.params["nprobe"] == 4 and embedder.texts_encoded == before  # loaded
    with (saved / "vectors.f32").open("r+b") as handle:
        handle.truncate(1000)
    with pytest.raises(CorruptIndexError, match=r"vectors\.f32"):
        EvidenceStore.load(saved, corpus, embedder)
