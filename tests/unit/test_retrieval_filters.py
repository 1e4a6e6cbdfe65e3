"""Metadata filters: never return a failing passage, and still return k hits."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safescale.corpora.schema import Status
from safescale.retrieval import EvidenceStore, PassageTable, SearchFilters
from safescale.retrieval import store as store_module
from safescale.retrieval.testing import make_passage

TOPICS = ["lung", "liver", "kidney", "thyroid", "breast"]
SCOPES = ["incidental", "screening", "symptomatic"]

dates = st.one_of(st.none(), st.dates(dt.date(1995, 1, 1), dt.date(2025, 12, 31)))

passage_fields = st.fixed_dictionaries(
    {
        "level": st.integers(1, 4),
        "status": st.sampled_from(list(Status)),
        "topic": st.sampled_from(TOPICS),
        "scope": st.one_of(st.none(), st.sampled_from(SCOPES)),
        "date": dates,
    }
)


@st.composite
def filters_strategy(draw: st.DrawFn) -> SearchFilters:
    date_from, date_to = draw(dates), draw(dates)
    if date_from and date_to and date_from > date_to:
        date_from, date_to = date_to, date_from
    return SearchFilters(
        min_grade_level=draw(st.one_of(st.none(), st.integers(1, 4))),
        statuses=draw(st.frozensets(st.sampled_from(list(Status)), min_size=1)),
        topics=draw(st.one_of(st.none(), st.frozensets(st.sampled_from([*TOPICS, "absent"])))),
        scopes=draw(st.one_of(st.none(), st.frozensets(st.sampled_from([*SCOPES, "absent"])))),
        date_from=date_from,
        date_to=date_to,
    )


@settings(max_examples=80, deadline=None)
@given(fields=st.lists(passage_fields, min_size=1, max_size=25), filters=filters_strategy())
def test_mask_equals_reference_semantics(fields: list[dict], filters: SearchFilters) -> None:
    passages = [make_passage(f"p{i}", f"text {i}", **f) for i, f in enumerate(fields)]
    mask = PassageTable.from_passages(passages).mask(filters)
    expected = [filters.matches(p) for p in passages]
    if mask is None:
        assert all(expected)
    else:
        assert mask.tolist() == expected


def _store(index: str, **params: int) -> tuple[EvidenceStore, np.ndarray]:
    rng = np.random.default_rng(11)
    n, d = 600, 16
    passages = [
        make_passage(
            f"p{i}",
            f"text {i}",
            level=int(rng.integers(1, 5)),
            status=list(Status)[int(rng.choice(3, p=[0.6, 0.3, 0.1]))],
            topic=TOPICS[int(rng.integers(0, len(TOPICS)))],
            scope=None if rng.random() < 0.2 else SCOPES[int(rng.integers(0, 3))],
            date=None
            if rng.random() < 0.1
            else dt.date(1995, 1, 1) + dt.timedelta(days=int(rng.integers(0, 11_000))),
        )
        for i in range(n)
    ]
    # clustered vectors so that an ivf with nprobe=1 really misses passing passages
    centers = rng.standard_normal((12, d))
    vectors = centers[rng.integers(0, 12, n)] + 0.3 * rng.standard_normal((n, d))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    store = EvidenceStore.from_vectors(
        vectors.astype(np.float32),
        PassageTable.from_passages(passages),
        index=index,  # type: ignore[arg-type]
        corpus_name="filters",
        passages_hash="0" * 64,
        embedder_name="random",
        embedder_hash="1" * 64,
        **params,
    )
    return store, unit.astype(np.float32)


STORES = {
    "flat": _store("flat"),
    # deliberately low effort: forces the retry-with-more-effort and exact fallbacks
    "ivf": _store("ivf", nlist=12, nprobe=1),
    "hnsw": _store("hnsw", m=4, ef_search=8),
}


@pytest.mark.parametrize("index", list(STORES))
@pytest.mark.parametrize("exact_subset_limit", [0, store_module.EXACT_SUBSET_LIMIT])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    filters=filters_strategy(),
    k=st.integers(1, 60),
    seed=st.integers(0, 2**16),
    rerank=st.booleans(),
)
def test_filtered_search_keeps_k_and_never_returns_failing_passages(
    index: str, exact_subset_limit: int, filters: SearchFilters, k: int, seed: int, rerank: bool
) -> None:
    store, unit = STORES[index]
    passages = [store.table.passage(i) for i in range(len(store))]
    passing = np.array([filters.matches(p) for p in passages])
    query = np.random.default_rng(seed).standard_normal((2, unit.shape[1]))
    with mock.patch.object(store_module, "EXACT_SUBSET_LIMIT", exact_subset_limit):
        results = store.search_vectors(
            query,
            k=k,
            filters=filters,
            rerank=rerank,
            include_superseded=True,
            include_withdrawn=True,
        )
    for row, hits in enumerate(results):
        assert len(hits) == min(k, int(passing.sum()))
        assert all(filters.matches(h.passage) for h in hits)
        assert len({h.passage.id for h in hits}) == len(hits)
        if index == "flat" and not rerank:
            q = query[row] / np.linalg.norm(query[row])
            scores = np.where(passing, unit @ q, -np.inf)
            expected = np.argsort(-scores, kind="stable")[: len(hits)]
            np.testing.assert_allclose([h.score for h in hits], scores[expected], rtol=0, atol=1e-5)


def test_current_only_preset_excludes_superseded_and_withdrawn() -> None:
    preset = SearchFilters.current_only(min_grade_level=2)
    assert preset.statuses == frozenset({Status.CURRENT})
    assert preset.min_grade_level == 2
    store, _ = STORES["flat"]
    hits = store.search_vectors(np.ones(16), k=30, filters=SearchFilters.current_only())[0]
    assert len(hits) == 30
    assert {h.passage.status for h in hits} == {Status.CURRENT}


def test_default_filter_keeps_every_status() -> None:
    assert SearchFilters().is_unrestricted
    assert SearchFilters().statuses == frozenset(Status)


def test_filter_validation() -> None:
    with pytest.raises(ValueError, match=r"min_grade_level must be 1\.\.4"):
        SearchFilters(min_grade_level=5)
    with pytest.raises(ValueError, match=r"date_from .* is after date_to"):
        SearchFilters(date_from=dt.date(2020, 1, 1), date_to=dt.date(2019, 1, 1))
    with pytest.raises(ValueError):
        SearchFilters(statuses=frozenset({"retired"}))  # type: ignore[arg-type]
    coerced = SearchFilters(statuses=["current"], topics="lung")  # type: ignore[arg-type]
    assert coerced.statuses == frozenset({Status.CURRENT})
    assert coerced.topics == frozenset({"lung"})
    assert hash(coerced) == hash(SearchFilters(statuses={Status.CURRENT}, topics={"lung"}))  # type: ignore[arg-type]


def test_filter_passing_nothing_returns_empty_lists() -> None:
    store, _ = STORES["hnsw"]
    nothing = SearchFilters(topics=frozenset({"absent"}))
    assert store.search_vectors(np.ones((3, 16)), k=5, filters=nothing) == [[], [], []]
