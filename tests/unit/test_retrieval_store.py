"""EvidenceStore: exact search, approximate indexes, persistence, staleness, corruption."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from safescale.corpora.schema import Status
from safescale.retrieval import (
    CorruptIndexError,
    EvidenceStore,
    PassageTable,
    RerankWeights,
    SearchFilters,
    StaleIndexError,
    open_store,
    store_dir,
)
from safescale.retrieval.testing import HashingEmbedder, make_corpus, make_passage

TOPICS = ["lung", "liver", "kidney", "thyroid"]
# Index-correctness tests search every passage, whatever its status.
EVERY_STATUS = {"include_superseded": True, "include_withdrawn": True}


def _passages(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [
        make_passage(
            f"p{i:04d}",
            f"finding {i} in the {TOPICS[i % 4]} measuring {int(rng.integers(1, 40))} mm "
            f"with follow-up {['none', 'CT', 'MRI', 'US'][i % 4]}",
            level=int(rng.integers(1, 5)),
            status=[Status.CURRENT, Status.SUPERSEDED, Status.WITHDRAWN][int(rng.integers(0, 3))],
            topic=TOPICS[i % 4],
            scope=None if i % 5 == 0 else ["incidental", "screening"][i % 2],
            date=None if i % 7 == 0 else dt.date(2000 + int(rng.integers(0, 25)), 1, 1),
        )
        for i in range(n)
    ]


def _random_store(n: int, d: int, index: str = "flat", seed: int = 0, **params: int):
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, d)).astype(np.float32)
    passages = _passages(n, seed)
    store = EvidenceStore.from_vectors(
        vectors,
        PassageTable.from_passages(passages),
        index=index,  # type: ignore[arg-type]
        corpus_name="random",
        passages_hash="0" * 64,
        embedder_name="random",
        embedder_hash="1" * 64,
        **params,
    )
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return store, unit, rng


def _brute_force(unit: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ unit.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.mark.parametrize(("n", "d", "k"), [(50, 8, 5), (400, 32, 10), (1000, 16, 50)])
def test_flat_search_equals_numpy_cosine_top_k(n: int, d: int, k: int) -> None:
    store, unit, rng = _random_store(n, d)
    queries = rng.standard_normal((7, d)).astype(np.float32)
    expected_scores, expected_ids = _brute_force(unit, queries, k)
    results = store.search_vectors(queries, k=k, **EVERY_STATUS)
    for row, hits in enumerate(results):
        assert [h.rank for h in hits] == list(range(1, k + 1))
        assert [store.table.row_of(h.passage.id) for h in hits] == expected_ids[row].tolist()
        np.testing.assert_allclose([h.score for h in hits], expected_scores[row], rtol=0, atol=1e-5)
        assert all(h.score == h.similarity for h in hits)


def test_single_query_search_restores_faiss_threads() -> None:
    import faiss

    store, _, rng = _random_store(30, 8, index="hnsw")
    before = faiss.omp_get_max_threads()
    assert store.small_batch_threads == 1
    store.search_vectors(rng.standard_normal(8), k=3)
    assert faiss.omp_get_max_threads() == before


def test_k_larger_than_store_returns_everything_once() -> None:
    store, _, rng = _random_store(12, 8)
    hits = store.search_vectors(rng.standard_normal(8), k=50, **EVERY_STATUS)[0]
    assert len(hits) == 12
    assert len({h.passage.id for h in hits}) == 12
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize(
    ("index", "params"),
    [("ivf", {"nlist": 8, "nprobe": 8}), ("hnsw", {"m": 16, "ef_search": 400})],
)
def test_approximate_indexes_at_full_effort_match_flat(index: str, params: dict) -> None:
    flat, _, rng = _random_store(400, 16, seed=3)
    approx, _, _ = _random_store(400, 16, index=index, seed=3, **params)
    queries = rng.standard_normal((10, 16))
    for exact, approximate in zip(
        flat.search_vectors(queries, k=10), approx.search_vectors(queries, k=10), strict=True
    ):
        assert [h.passage.id for h in approximate] == [h.passage.id for h in exact]


def test_ivf_defaults_scale_with_size() -> None:
    small, _, _ = _random_store(100, 8, index="ivf")
    assert small.params["nlist"] == 2  # capped at n // 39
    big, _, _ = _random_store(20_000, 8, index="ivf")
    assert big.params["nlist"] == 256  # power of two nearest 2 * sqrt(n)
    assert big.params["nprobe"] == 16


def test_unknown_index_parameter_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['nlist'\].*'hnsw'"):
        _random_store(20, 4, index="hnsw", nlist=4)
    with pytest.raises(ValueError, match="unknown index type 'annoy'"):
        _random_store(20, 4, index="annoy")


def test_query_dimension_mismatch_is_clear() -> None:
    store, _, _ = _random_store(20, 8)
    with pytest.raises(ValueError, match="dimension 8"):
        store.search_vectors(np.ones(5), k=3)


def test_text_search_single_and_batch(cache_dir: Path) -> None:
    corpus = make_corpus(_passages(60))
    store = EvidenceStore.build(corpus, HashingEmbedder(), cache_dir=cache_dir)
    target = corpus.passages[17]
    hits = store.search(target.text, k=3, **EVERY_STATUS)
    assert hits[0].passage == target
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    batch = store.search([target.text, corpus.passages[3].text], k=2, **EVERY_STATUS)
    assert [b[0].passage.id for b in batch] == [target.id, corpus.passages[3].id]
    assert [h.passage.id for h in batch[0]] == [h.passage.id for h in hits[:2]]


def test_rerank_follows_documented_formula(cache_dir: Path) -> None:
    corpus = make_corpus(_passages(80))
    store = EvidenceStore.build(corpus, HashingEmbedder(), cache_dir=cache_dir)
    weights = RerankWeights(grade=0.3, recency=0.2, half_life_years=4.0)
    query = "finding in the lung measuring 12 mm with follow-up CT"
    hits = store.search(query, k=5, rerank=True, weights=weights)
    reference = store.manifest.reference_date
    assert reference == max(p.source.date for p in corpus.passages if p.source.date)
    for hit in hits:
        p = hit.passage
        recency = 0.0
        if p.source.date is not None:
            age = (reference - p.source.date).days / 365.25
            recency = 2 ** (-age / 4.0)
        expected = hit.similarity + 0.3 * (4 - p.grade.level) / 3 + 0.2 * recency
        assert hit.score == pytest.approx(expected, abs=1e-6)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # every reranked hit comes from the similarity candidate pool
    pool = {h.passage.id for h in store.search(query, k=weights.candidates(5))}
    assert {h.passage.id for h in hits} <= pool


def test_rerank_prefers_strong_grade_among_near_duplicates(cache_dir: Path) -> None:
    text = "Solid pulmonary nodule under 6 mm in a low-risk patient: no routine follow-up."
    passages = [
        make_passage("weak", text, level=4, date=dt.date(2020, 1, 1)),
        make_passage("strong", text + " ", level=1, date=dt.date(2020, 1, 1)),
        make_passage("other", "Thyroid nodule with microcalcifications: biopsy.", level=1),
    ]
    store = EvidenceStore.build(make_corpus(passages), HashingEmbedder(), cache_dir=cache_dir)
    plain = store.search(text, k=2)
    assert {h.passage.id for h in plain} == {"weak", "strong"}
    reranked = store.search(text, k=2, rerank=True)
    assert reranked[0].passage.id == "strong"
    assert reranked[0].score - reranked[1].score == pytest.approx(0.06, abs=1e-6)


def test_save_load_round_trip_gives_identical_results(tmp_path: Path, cache_dir: Path) -> None:
    corpus = make_corpus(_passages(120))
    embedder = HashingEmbedder()
    queries = ["lung 5 mm CT", "thyroid finding MRI", "kidney none"]
    filters = SearchFilters.current_only(min_grade_level=3)
    for index in ("flat", "ivf", "hnsw"):
        store = EvidenceStore.build(corpus, embedder, index, cache_dir=cache_dir)  # type: ignore[arg-type]
        directory = store.save(tmp_path / index)
        loaded = EvidenceStore.load(directory, corpus, embedder)
        assert loaded.params == store.params
        assert loaded.manifest == store.manifest
        for kwargs in ({}, {"filters": filters}, {"rerank": True}):
            before = store.search(queries, k=7, **kwargs)
            after = loaded.search(queries, k=7, **kwargs)
            assert [[(h.passage, h.score, h.rank) for h in r] for r in after] == [
                [(h.passage, h.score, h.rank) for h in r] for r in before
            ]
        # without the corpus the passages are parsed back from Parquet, unchanged
        bare = EvidenceStore.load(directory, embedder=embedder)
        assert [bare.table.passage(i) for i in range(len(bare))] == list(corpus.passages)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs


def test_manifest_records_what_the_index_depends_on(tmp_path: Path, cache_dir: Path) -> None:
    corpus = make_corpus(_passages(50))
    embedder = HashingEmbedder(dimension=32)
    store = EvidenceStore.build(corpus, embedder, "hnsw", cache_dir=cache_dir, m=8)
    manifest = json.loads((store.save(tmp_path / "s") / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["corpus"] == {"name": "test-corpus", "passages_hash": corpus.passages_hash}
    assert manifest["embedder"] == {
        "name": embedder.name,
        "content_hash": embedder.content_hash,
        "dimension": 32,
    }
    assert manifest["index"]["type"] == "hnsw"
    assert manifest["index"]["params"] == {"m": 8, "ef_construction": 64, "ef_search": 128}
    assert manifest["passage_count"] == 50
    assert set(manifest["files"]) == {"index.faiss", "passages.parquet"}


def test_stale_corpus_raises_or_rebuilds(tmp_path: Path, cache_dir: Path) -> None:
    passages = _passages(40)
    corpus = make_corpus(passages)
    embedder = HashingEmbedder()
    directory = EvidenceStore.build(corpus, embedder, cache_dir=cache_dir).save(tmp_path / "s")
    edited = make_corpus([*passages[:-1], make_passage("p-new", "a brand new passage")])
    with pytest.raises(StaleIndexError, match=r"stale.*passages hash") as info:
        EvidenceStore.load(directory, edited, embedder)
    assert str(directory) in str(info.value)
    assert info.value.path == directory

    rebuilt = EvidenceStore.load(
        directory, edited, embedder, rebuild_if_stale=True, cache_dir=cache_dir
    )
    assert rebuilt.passages_hash == edited.passages_hash
    assert rebuilt.build_stats is not None and rebuilt.build_stats.embedded == 1
    assert EvidenceStore.load(directory, edited, embedder).search("brand new", k=1)[
        0
    ].passage.id == ("p-new")


def test_other_embedder_is_stale(tmp_path: Path, cache_dir: Path) -> None:
    corpus = make_corpus(_passages(20))
    directory = EvidenceStore.build(corpus, HashingEmbedder(seed=1), cache_dir=cache_dir).save(
        tmp_path / "s"
    )
    with pytest.raises(StaleIndexError, match="embedder"):
        EvidenceStore.load(directory, corpus, HashingEmbedder(seed=2))


@pytest.fixture
def saved(tmp_path: Path, cache_dir: Path) -> tuple[Path, object]:
    corpus = make_corpus(_passages(60))
    store = EvidenceStore.build(corpus, HashingEmbedder(), "hnsw", cache_dir=cache_dir)
    return store.save(tmp_path / "store"), corpus


def test_truncated_index_is_corrupt(saved: tuple[Path, object]) -> None:
    directory, corpus = saved
    path = directory / "index.faiss"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptIndexError, match=r"index.faiss has .* bytes, expected") as info:
        EvidenceStore.load(directory, corpus)
    assert info.value.path == path


def test_altered_bytes_are_corrupt(saved: tuple[Path, object]) -> None:
    directory, corpus = saved
    path = directory / "index.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="sha256"):
        EvidenceStore.load(directory, corpus)


def test_unreadable_index_is_corrupt_even_without_checksum(saved: tuple[Path, object]) -> None:
    directory, corpus = saved
    path = directory / "index.faiss"
    data = bytearray(path.read_bytes())
    data[:4] = b"JUNK"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptIndexError, match="not a readable FAISS index"):
        EvidenceStore.load(directory, corpus, verify=False)


def test_corrupt_parquet_and_manifest(saved: tuple[Path, object]) -> None:
    directory, corpus = saved
    table = directory / "passages.parquet"
    size = table.stat().st_size
    table.write_bytes(b"\0" * size)
    with pytest.raises(CorruptIndexError, match=r"passages.parquet is unreadable"):
        EvidenceStore.load(directory, corpus, verify=False)
    (directory / "manifest.json").write_text('{"format": "safescale.evidence-store", ')
    with pytest.raises(CorruptIndexError, match=r"manifest.json is not valid JSON"):
        EvidenceStore.load(directory, corpus)
    manifest = {"format": "safescale.evidence-store", "schema_version": 99}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="schema version 99"):
        EvidenceStore.load(directory, corpus)
    (directory / "manifest.json").unlink()
    with pytest.raises(CorruptIndexError, match=r"manifest.json is missing"):
        EvidenceStore.load(directory, corpus)
    with pytest.raises(FileNotFoundError, match="no evidence store"):
        EvidenceStore.load(directory / "nope")


def test_missing_index_file_is_corrupt(saved: tuple[Path, object]) -> None:
    directory, corpus = saved
    (directory / "index.faiss").unlink()
    with pytest.raises(CorruptIndexError, match=r"index.faiss is missing"):
        EvidenceStore.load(directory, corpus)


def test_save_replaces_a_store_but_never_a_foreign_directory(
    tmp_path: Path, cache_dir: Path
) -> None:
    corpus = make_corpus(_passages(30))
    store = EvidenceStore.build(corpus, HashingEmbedder(), cache_dir=cache_dir)
    directory = store.save(tmp_path / "s")
    store.save(directory)  # replacing a store is fine
    assert EvidenceStore.load(directory, corpus).search_vectors(np.ones(64), k=1)
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an evidence store"):
        store.save(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    # a store that lost its manifest is a damaged store: `index build` replaces it
    (directory / "manifest.json").unlink()
    store.save(directory)
    assert EvidenceStore.load(directory, corpus).search_vectors(np.ones(64), k=1)


def test_embedding_cache_reuses_vectors(cache_dir: Path) -> None:
    passages = _passages(50)
    embedder = HashingEmbedder()
    first = EvidenceStore.build(make_corpus(passages), embedder, cache_dir=cache_dir)
    assert first.build_stats is not None
    assert (first.build_stats.embedded, first.build_stats.reused) == (50, 0)
    assert embedder.texts_encoded == 50

    edited = [*passages]
    edited[10] = make_passage("p0010", "an edited passage text", level=2)
    edited.append(make_passage("p-extra", "one more passage"))
    second = EvidenceStore.build(make_corpus(edited), embedder, cache_dir=cache_dir)
    assert second.build_stats is not None
    assert (second.build_stats.embedded, second.build_stats.reused) == (2, 49)
    assert embedder.texts_encoded == 52
    # reused vectors give the same index contents as embedding from scratch
    fresh = EvidenceStore.build(make_corpus(edited), HashingEmbedder(), use_cache=False)
    np.testing.assert_array_equal(
        second.index.reconstruct_n(0, len(edited)), fresh.index.reconstruct_n(0, len(edited))
    )


def test_embedding_cache_is_per_embedder(cache_dir: Path) -> None:
    corpus = make_corpus(_passages(10))
    EvidenceStore.build(corpus, HashingEmbedder(seed=1), cache_dir=cache_dir)
    other = HashingEmbedder(seed=2)
    store = EvidenceStore.build(corpus, other, cache_dir=cache_dir)
    assert store.build_stats is not None and store.build_stats.embedded == 10


def test_open_store_builds_once_then_loads(cache_dir: Path) -> None:
    corpus = make_corpus(_passages(40))
    embedder = HashingEmbedder()
    open_store(corpus, embedder, "ivf", cache_dir)
    directory = store_dir(corpus, embedder, "ivf", cache_dir)
    assert (directory / "manifest.json").exists()
    assert directory.name.startswith(f"test-corpus-{corpus.passages_hash[:12]}-ivf-")
    calls = embedder.calls
    again = open_store(corpus, embedder, "ivf", cache_dir, nprobe=1)
    assert again.build_stats is None  # loaded, not rebuilt
    assert again.params["nprobe"] == 1
    assert embedder.calls == calls
    # different build parameters -> rebuilt from cached embeddings, saved over the old
    rebuilt = open_store(corpus, embedder, "ivf", cache_dir, nlist=2)
    assert rebuilt.params["nlist"] == 2 and rebuilt.build_stats is not None
    assert rebuilt.build_stats.embedded == 0
    assert EvidenceStore.read_manifest(directory).index.params["nlist"] == 2


def test_open_store_rebuilds_corrupt_cache(cache_dir: Path) -> None:
    corpus = make_corpus(_passages(30))
    embedder = HashingEmbedder()
    open_store(corpus, embedder, "flat", cache_dir)
    directory = store_dir(corpus, embedder, "flat", cache_dir)
    (directory / "index.faiss").write_bytes(b"garbage")
    store = open_store(corpus, embedder, "flat", cache_dir)
    assert store.build_stats is not None
    assert len(EvidenceStore.load(directory, corpus)) == 30


def test_open_store_rebuilds_a_cache_that_lost_its_manifest(
    cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = make_corpus(_passages(30))
    embedder = HashingEmbedder()
    open_store(corpus, embedder, "flat", cache_dir)
    directory = store_dir(corpus, embedder, "flat", cache_dir)
    (directory / "manifest.json").unlink()
    with caplog.at_level("WARNING"):
        store = open_store(corpus, embedder, "flat", cache_dir)
    assert "lost its manifest.json" in caplog.text
    assert store.build_stats is not None
    assert len(EvidenceStore.load(directory, corpus)) == 30


def test_empty_corpus_is_rejected(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="no passages"):
        EvidenceStore.build(make_corpus([]), HashingEmbedder(), cache_dir=cache_dir)


def test_passage_lookup_and_errors() -> None:
    store, _, _ = _random_store(10, 4)
    assert store.passage("p0003").id == "p0003"
    with pytest.raises(KeyError, match="nope"):
        store.passage("nope")
    with pytest.raises(ValueError, match="k must be"):
        store.search_vectors(np.ones(4), k=0)
    with pytest.raises(ValueError, match="cannot set"):
        store.set_search_params(nprobe=3)


def test_concurrent_searches_match_sequential_ones(cache_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    corpus = make_corpus(_passages(200))
    store = EvidenceStore.build(corpus, HashingEmbedder(), "hnsw", cache_dir=cache_dir)
    queries = [p.text for p in corpus.passages[:40]]
    filters = [None, SearchFilters.current_only(), SearchFilters(min_grade_level=2)]
    jobs = [(q, filters[i % 3]) for i, q in enumerate(queries)]
    expected = [[h.passage.id for h in store.search(q, k=5, filters=f)] for q, f in jobs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda job: store.search(job[0], k=5, filters=job[1]), jobs))
    assert [[h.passage.id for h in hits] for hits in got] == expected
    assert store.search([], k=5) == []
