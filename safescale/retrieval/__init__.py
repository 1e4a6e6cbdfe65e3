"""Retrieval: a FAISS evidence store over graded passages.

Build a store from a corpus and an embedder, search it with metadata filters and
optional grade-aware reranking, persist it with a manifest, and plug it into
llama-index through :class:`safescale.retrieval.llama_index.EvidenceRetriever`.
"""

from __future__ import annotations

from safescale.retrieval.embedding_cache import EmbeddingCache
from safescale.retrieval.errors import CorruptIndexError, EvidenceStoreError, StaleIndexError
from safescale.retrieval.faiss_index import INDEX_TYPES, IndexType
from safescale.retrieval.filters import ALL_STATUSES, RerankWeights, SearchFilters
from safescale.retrieval.store import (
    STORE_SCHEMA_VERSION,
    BuildStats,
    EvidenceStore,
    Hit,
    StoreManifest,
    open_store,
    store_dir,
)
from safescale.retrieval.table import PassageTable

__all__ = [
    "ALL_STATUSES",
    "INDEX_TYPES",
    "STORE_SCHEMA_VERSION",
    "BuildStats",
    "CorruptIndexError",
    "EmbeddingCache",
    "EvidenceStore",
    "EvidenceStoreError",
    "Hit",
    "IndexType",
    "PassageTable",
    "RerankWeights",
    "SearchFilters",
    "StaleIndexError",
    "StoreManifest",
    "open_store",
    "store_dir",
]
