"""The llama-index retriever adapter."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
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


def test_retriever_reranks_when_asked(tmp_path: Path) -> None:
    store = _store(tmp_path)
    nodes = EvidenceRetriever(store, k=5, rerank=True).retrieve("nodule follow-up")
    scores = [n.score for n in nodes]
    assert scores == sorted(scores, reverse=True)
    assert all(n.score > n.node.metadata["similarity"] for n in nodes)
