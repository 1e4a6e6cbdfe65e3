"""A llama-index retriever over an :class:`~safescale.retrieval.store.EvidenceStore`.

``EvidenceRetriever(store, k=5)`` drops the store into llama-index query engines and
pipelines: it returns ``NodeWithScore`` objects whose ``TextNode`` carries the passage
text and its metadata (source, grade, status, topic, scope, supersedes) as flat
key/value pairs, and whose node id is the passage id.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from safescale.corpora.schema import Passage
from safescale.retrieval.filters import RerankWeights, SearchFilters
from safescale.retrieval.store import EvidenceStore, Hit

__all__ = ["EvidenceRetriever", "passage_metadata", "passage_node"]

# Keys kept out of the text an LLM sees (bookkeeping rather than evidence).
_EXCLUDED_LLM_KEYS = ["source_url", "grade_system", "supersedes", "rank", "similarity"]


def passage_metadata(passage: Passage) -> dict[str, Any]:
    """Flat, JSON-friendly metadata of a passage (what llama-index nodes carry)."""
    source = passage.source
    return {
        "passage_id": passage.id,
        "source_org": source.org,
        "source_title": source.title,
        "source_version": source.version,
        "source_date": source.date.isoformat() if source.date else None,
        "source_url": source.url,
        "grade_system": passage.grade.system,
        "grade": passage.grade.raw,
        "grade_level": passage.grade.level,
        "status": passage.status.value,
        "supersedes": ",".join(passage.supersedes),
        "topic": passage.topic,
        "scope": passage.scope,
    }


def passage_node(hit: Hit) -> NodeWithScore:
    """A ``NodeWithScore`` for one hit (node id = passage id, score = ``hit.score``)."""
    metadata = passage_metadata(hit.passage)
    metadata["rank"] = hit.rank
    metadata["similarity"] = hit.similarity
    node = TextNode(
        id_=hit.passage.id,
        text=hit.passage.text,
        metadata=metadata,
        excluded_embed_metadata_keys=list(metadata),
        excluded_llm_metadata_keys=list(_EXCLUDED_LLM_KEYS),
    )
    return NodeWithScore(node=node, score=hit.score)


class EvidenceRetriever(BaseRetriever):
    """llama-index ``BaseRetriever`` backed by an evidence store.

    Args:
        store: the evidence store.
        k: hits per query.
        filters: metadata filters applied to every query.
        rerank: apply grade-aware reranking.
        weights: rerank weights.
        callback_manager: llama-index callback manager.
        verbose: llama-index verbosity.
    """

    def __init__(
        self,
        store: EvidenceStore,
        k: int = 5,
        filters: SearchFilters | None = None,
        rerank: bool = False,
        weights: RerankWeights | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.store = store
        self.k = k
        self.filters = filters
        self.rerank = rerank
        self.weights = weights
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        embedding = query_bundle.embedding
        if embedding is not None and len(embedding) == self.store.dimension:
            hits = self.store.search_vectors(
                np.asarray(embedding, dtype=np.float32),
                self.k,
                self.filters,
                self.rerank,
                self.weights,
            )[0]
        else:
            hits = self.store.search(
                query_bundle.query_str, self.k, self.filters, self.rerank, self.weights
            )
        return [passage_node(hit) for hit in hits]
