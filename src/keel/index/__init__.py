"""Vector indexes for retrieval, one per model version: an HNSW index (usearch) over item
embeddings, saved on disk and published atomically with the version it belongs to."""

from keel.index.store import IndexStore
from keel.index.vector import MAX_K, METRICS, Hits, VectorIndex, exact_search

__all__ = ["MAX_K", "METRICS", "Hits", "IndexStore", "VectorIndex", "exact_search"]
