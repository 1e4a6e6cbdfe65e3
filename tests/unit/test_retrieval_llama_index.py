"""The llama-index retriever adapter."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.postprocessor import SimilarityPostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from safescale.corpora.schema import Status
from safescale.retrieval import EvidenceStore, SearchFilters
from safescale.retrieval.llama_index import EvidenceRetriever
from safescale.retrieval.testing import HashingEmbedder, make_corpus, make_passage


def _store(tmp_path: Path) -> EvidenceStore:
    passages = [
        make_passage(
            f"p{i}",
            f"Recommendation {i}: nodule of {i} mm, follow-up in {12 - i} months.",
            level=1 + i % 4,
            status=Status.SUPERSEDED if i % 3 == 0 else Status.CURRENT,
            topic="lung",
            scope="incidental",
            date=dt.date(2010 + i, 6, 1),
        )
        for i in range(12)
    ]
    return EvidenceStore.build(make_corpus(passages), HashingEmbedder(), cache_dir=tmp_path)


def test_retriever_returns_nodes_with_passage_metadata(tmp_path: Path) -> None:
    store = _store(tmp_path)
    retriever = EvidenceRetriever(store, k=4, filters=SearchFilters.current_only())
    assert isinstance(retriever, BaseRetriever)
    query = "Recommendation 5: nodule of 5 mm, follow-up in 7 months."
    nodes = retriever.retrieve(query)
    hits = store.search(query, k=4, filters=SearchFilters.current_only())
    assert [n.node.node_id for n in nodes] == [h.passage.id for h in hits]
    assert [n.score for n in nodes] == [h.score for h in hits]
    first = nodes[0]
    assert isinstance(first, NodeWithScore) and isinstance(first.node, TextNode)
    assert first.node.node_id == "p5"
    assert first.node.get_content(metadata_mode=MetadataMode.NONE) == store.passage("p5").text
    meta = first.node.metadata
    assert meta["grade_level"] == 2 and meta["grade"] == "L2"
    assert meta["status"] == "current"
    assert meta["source_date"] == "2015-06-01"
    assert meta["topic"] == "lung" and meta["scope"] == "incidental"
    assert meta["rank"] == 1
    assert all(n.node.metadata["status"] == "current" for n in nodes)
    # the LLM sees the grade and status but not bookkeeping keys
    llm_text = first.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "grade_level: 2" in llm_text and "similarity" not in llm_text


def test_retriever_uses_a_precomputed_query_embedding(tmp_path: Path) -> None:
    store = _store(tmp_path)
    vector = np.zeros(store.dimension, dtype=np.float32)
    vector[0] = 1.0
    bundle = QueryBundle(query_str="ignored text", embedding=vector.tolist())
    nodes = EvidenceRetriever(store, k=3).retrieve(bundle)
    expected = store.search_vectors(vector, k=3)[0]
    assert [n.node.node_id for n in nodes] == [h.passage.id for h in expected]


def test_retriever_reranks_but_scores_stay_similarities(tmp_path: Path) -> None:
    store = _store(tmp_path)
    query = "nodule follow-up"
    nodes = EvidenceRetriever(store, k=5, rerank=True).retrieve(query)
    hits = store.search(query, k=5, rerank=True)
    assert [n.node.node_id for n in nodes] == [h.passage.id for h in hits]
    assert [n.score for n in nodes] == [h.similarity for h in hits]
    assert [n.node.metadata["rerank_score"] for n in nodes] == [h.score for h in hits]
    assert all(n.node.metadata["rerank_score"] > n.score for n in nodes)
    assert "rerank_score" not in nodes[0].node.get_content(metadata_mode=MetadataMode.LLM)
    plain = EvidenceRetriever(store, k=5).retrieve(query)
    assert all("rerank_score" not in n.node.metadata for n in plain)


def test_similarity_cutoff_cuts_on_similarity_after_rerank(tmp_path: Path) -> None:
    store = _store(tmp_path)
    query = "nodule follow-up"
    nodes = EvidenceRetriever(store, k=6, rerank=True).retrieve(query)
    similarities = sorted(n.score for n in nodes)
    cutoff = similarities[len(similarities) // 2]
    kept = SimilarityPostprocessor(similarity_cutoff=cutoff).postprocess_nodes(nodes)
    assert {n.node.node_id for n in kept} == {
        n.node.node_id for n in nodes if n.node.metadata["similarity"] >= cutoff
    }
    assert 0 < len(kept) < len(nodes)


def test_status_rule_is_the_same_for_store_retriever_and_cli(tmp_path: Path) -> None:
    store = _store(tmp_path)
    query = "Recommendation 3: nodule of 3 mm, follow-up in 9 months."  # p3 is superseded
    default = EvidenceRetriever(store, k=12).retrieve(query)
    assert {n.node.metadata["status"] for n in default} == {"current"}
    assert [n.node.node_id for n in default] == [h.passage.id for h in store.search(query, k=12)]
    widened = EvidenceRetriever(store, k=12, include_superseded=True).retrieve(query)
    assert widened[0].node.node_id == "p3"
    assert [n.node.node_id for n in widened] == [
        h.passage.id for h in store.search(query, k=12, include_superseded=True)
    ]
    with pytest.raises(ValueError, match="include_superseded=True"):
        store.search(query, k=3, filters=SearchFilters(statuses=frozenset({Status.SUPERSEDED})))


def test_cli_search_uses_the_store_flags() -> None:
    import inspect

    from safescale.cli.index import search

    parameters = inspect.signature(search).parameters
    for flag in ("include_superseded", "include_withdrawn"):
        assert parameters[flag].default is False
        assert flag in inspect.signature(EvidenceStore.search).parameters
        assert inspect.signature(EvidenceStore.search).parameters[flag].default is False
        assert inspect.signature(EvidenceRetriever).parameters[flag].default is False


def test_absent_metadata_is_absent_not_none(tmp_path: Path) -> None:
    passage = make_passage("bare", "A passage with no date, version, scope or url.", level=2)
    store = EvidenceStore.build(make_corpus([passage]), HashingEmbedder(), cache_dir=tmp_path)
    (node,) = EvidenceRetriever(store, k=1).retrieve("passage")
    meta = node.node.metadata
    assert None not in meta.values()
    for key in ("source_date", "source_version", "source_url", "scope", "supersedes"):
        assert key not in meta
    llm_text = node.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "None" not in llm_text
    assert "grade_level: 2" in llm_text
