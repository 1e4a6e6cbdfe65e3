"""A llama-index retriever over an :class:`~safescale.retrieval.store.EvidenceStore`.

``EvidenceRetriever(store, k=5)`` drops the store into llama-index query engines and
pipelines: it returns ``NodeWithScore`` objects whose ``TextNode`` carries the passage
text and its metadata (source, grade, status, topic, scope, supersedes) as flat
key/value pairs, and whose node id is the passage id.

It follows the store's status rule: current passages only unless
``include_superseded=True`` / ``include_withdrawn=True`` (the same flags as
:meth:`EvidenceStore.search` and ``safescale index search``). The node score is always
the cosine similarity, so llama-index postprocessors such as
``SimilarityPostprocessor(similarity_cutoff=...)`` cut on similarity; with
``rerank=True`` the nodes come in rerank order and the grade-aware score is in
``metadata["rerank_score"]``. Metadata a passage does not have (no version, no date, no
scope, nothing superseded) is left out of the node, never written as ``None``.
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
_EXCLUDED_LLM_KEYS = [
    "source_url",
    "grade_system",
    "supersedes",
    "rank",
    "similarity",
    "rerank_score",
]


def passage_metadata(passage: Passage) -> dict[str, Any]:
    """Flat, JSON-friendly metadata of a passage (what llama-index nodes carry).

    Keys whose value the passage does not have are omitted (not set to ``None``).
    """
    source = passage.source
    metadata = {
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
    return {key: value for key, value in metadata.items() if value not in (None, "")}


def passage_node(hit: Hit, *, reranked: bool = False) -> NodeWithScore:
    """A ``NodeWithScore`` for one hit (node id = passage id, score = the similarity).

    Args:
        hit: the search hit.
        reranked: the hit comes from a reranked search; its rerank score is then kept
            in ``metadata["rerank_score"]``.
    """
    metadata = passage_metadata(hit.passage)
    metadata["rank"] = hit.rank
    metadata["similarity"] = hit.similarity
    if reranked:
        metadata["rerank_score"] = hit.score
    node = TextNode(
        id_=hit.passage.id,
        text=hit.passage.text,
        metadata=metadata,
        excluded_embed_metadata_keys=list(metadata),
        excluded_llm_metadata_keys=[key for key in _EXCLUDED_LLM_KEYS if key in metadata],
    )
    return NodeWithScore(node=node, score=hit.similarity)


class EvidenceRetriever(BaseRetriever):
    """llama-index ``BaseRetriever`` backed by an evidence store.

    Args:
        store: the evidence store.
        k: hits per query.
        filters: metadata filters applied to every query.
        rerank: apply grade-aware reranking (order only; scores stay similarities).
        weights: rerank weights.
        include_superseded: also return superseded passages (default: current only).
        include_withdrawn: also return withdrawn passages.
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
        *,
        include_superseded: bool = False,
        include_withdrawn: bool = False,
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
        self.include_superseded = include_superseded
        self.include_withdrawn = include_withdrawn
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        embedding = query_bundle.embedding
        flags = {
            "include_superseded": self.include_superseded,
            "include_withdrawn": self.include_withdrawn,
        }
        if embedding is not None and len(embedding) == self.store.dimension:
            hits = self.store.search_vectors(
                np.asarray(embedding, dtype=np.float32),
                self.k,
                self.filters,
                self.rerank,
                self.weights,
                **flags,
            )[0]
        else:
            hits = self.store.search(
                query_bundle.query_str, self.k, self.filters, self.rerank, self.weights, **flags
            )
        return [passage_node(hit, reranked=self.rerank) for hit in hits]
