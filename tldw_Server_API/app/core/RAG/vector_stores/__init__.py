"""Vector stores of the RAG host: the `VectorStore` protocol (`base`), the shared metadata-filter
language (`filters`), adapters for Chroma (`chroma_store`, default) and pgvector (`pgvector_store`),
and `factory.create_vector_store_factory`, which picks one from `StorageConfig`.

Only the pure parts are re-exported here; adapters (and their drivers) load when the factory needs them.
"""

from __future__ import annotations

from tldw_Server_API.app.core.RAG.vector_stores.base import VectorHit, VectorRecord, VectorStore
from tldw_Server_API.app.core.RAG.vector_stores.filters import parse_where

__all__ = ["VectorHit", "VectorRecord", "VectorStore", "parse_where"]
