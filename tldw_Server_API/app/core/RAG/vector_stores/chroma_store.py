"""`ChromaVectorStore`: the `VectorStore` protocol over one user's Chroma client (a real
`PersistentClient` or the in-memory stub of `ChromaDB_Library`).

Imports the filter language, the shared checks and the Chroma helpers; never chromadb itself (the
client provider owns it). Upserts replace metadata (Chroma merges it) and are split to the client's
maximum batch size. Synchronous: callers on an event loop run it in a thread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from loguru import logger

from tldw_Server_API.app.core.Embeddings.ChromaDB_Library import (
    collection_dimension,
    get_collection_or_none,
    get_or_create_cosine_collection,
    is_storage_failure,
    store_unavailable,
)
from tldw_Server_API.app.core.errors import InvalidInput, NotFound
from tldw_Server_API.app.core.RAG.vector_stores.base import (
    Metadata,
    VectorHit,
    VectorRecord,
    as_query_vector,
    order_by_request,
    page,
    prepare_upsert,
    validate_collection_name,
    validate_dimension,
    validate_ids,
    validate_paging,
    validate_top_k,
)
from tldw_Server_API.app.core.RAG.vector_stores.filters import parse_where, to_chroma_where

P = ParamSpec("P")
R = TypeVar("R")


def _storage_errors_translated(method: Callable[P, R]) -> Callable[P, R]:
    """Chroma's storage failures (unwritable or broken files, a client that cannot start) become
    503 `service_unavailable`, as the pgvector adapter's do; the details go to the log only."""

    @functools.wraps(method)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            if not is_storage_failure(exc):
                raise
            logger.warning("chroma: {} failed: {}: {}", method.__name__, type(exc).__name__, exc)
            raise store_unavailable() from exc

    return translated


def _chroma_where(where: Mapping[str, Any] | None) -> dict[str, Any] | None:
    node = parse_where(where)
    return None if node is None else to_chroma_where(node)


def _replacing_metadata(old: Mapping[str, Any] | None, new: Metadata) -> dict[str, Any] | None:
    """What to send so that Chroma's merge ends with exactly `new`: None removes a stale key."""
    out: dict[str, Any] = {key: None for key in (old or {}) if key not in new}
    out.update(new)
    return out or None


class ChromaVectorStore:
    """One user's collections in that user's Chroma client (isolation is the client's directory)."""

    def __init__(self, client_provider: Callable[[], Any]) -> None:
        self._client_provider = client_provider

    @property
    def _client(self) -> Any:
        return self._client_provider()

    def _collection(self, name: str) -> Any:
        return get_collection_or_none(self._client, validate_collection_name(name))

    @_storage_errors_translated
    def ensure_collection(self, name: str, dimension: int, metric: str = "cosine") -> None:
        validate_dimension(dimension, metric)
        get_or_create_cosine_collection(self._client, validate_collection_name(name), dimension)

    @_storage_errors_translated
    def upsert(self, name: str, ids: Sequence[str], vectors: Any,
               documents: Sequence[str] | None = None,
               metadatas: Sequence[Mapping[str, Any] | None] | None = None) -> None:
        collection = self._collection(name)
        if collection is None:
            raise NotFound(f"collection {name!r} does not exist", param="collection")
        id_list, matrix, docs, metas = prepare_upsert(ids, vectors, documents, metadatas,
                                                      collection_dimension(collection))
        step = max(1, int(self._client.get_max_batch_size()))
        for start in range(0, len(id_list), step):
            chunk = slice(start, start + step)
            batch_ids = id_list[chunk]
            existing = collection.get(ids=batch_ids, include=["metadatas"])
            old = dict(zip(existing["ids"], existing["metadatas"] or [], strict=False))
            collection.upsert(ids=batch_ids, embeddings=matrix[chunk], documents=docs[chunk],
                              metadatas=[_replacing_metadata(old.get(i), m) for i, m in zip(batch_ids, metas[chunk],
                                                                                             strict=True)])

    @_storage_errors_translated
    def query(self, name: str, vector: Any, top_k: int, where: Mapping[str, Any] | None = None) -> list[VectorHit]:
        validate_top_k(top_k)
        chroma_where = _chroma_where(where)
        collection = self._collection(name)
        query = as_query_vector(vector, collection_dimension(collection) if collection is not None else None)
        if collection is None:
            return []   # no count() first: on 100k records it costs more than the query itself
        result = collection.query(query_embeddings=[query], n_results=top_k, where=chroma_where,
                                  include=["documents", "metadatas", "distances"])
        return [VectorHit(id=i, score=1.0 - float(d), document=doc or "", metadata=dict(meta or {}))
                for i, doc, meta, d in zip(result["ids"][0], result["documents"][0], result["metadatas"][0],
                                           result["distances"][0], strict=True)]

    @_storage_errors_translated
    def get(self, name: str, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None,
            limit: int | None = None, offset: int = 0, include_vectors: bool = False) -> list[VectorRecord]:
        limit, offset = validate_paging(limit, offset)
        id_list = validate_ids(ids, unique=False) if ids is not None else None
        chroma_where = _chroma_where(where)
        collection = self._collection(name)
        if collection is None or limit == 0 or id_list == []:
            return []
        include = ["documents", "metadatas"] + (["embeddings"] if include_vectors else [])
        if id_list is not None:  # order by request, then page: fetch every asked id
            unique = list(dict.fromkeys(id_list))  # Chroma refuses repeated ids
            records = order_by_request(self._fetch(collection, unique, chroma_where, None, None, include), id_list)
            return page(records, limit, offset)
        return self._fetch(collection, None, chroma_where, limit, offset, include)

    @staticmethod
    def _fetch(collection: Any, ids: list[str] | None, where: dict[str, Any] | None, limit: int | None,
               offset: int | None, include: list[str]) -> list[VectorRecord]:
        result = collection.get(ids=ids, where=where, limit=limit, offset=offset or None, include=include)
        vectors = result.get("embeddings")
        return [VectorRecord(id=i, document=doc or "", metadata=dict(meta or {}),
                             vector=[float(x) for x in vectors[n]] if vectors is not None else None)
                for n, (i, doc, meta) in enumerate(zip(result["ids"], result["documents"], result["metadatas"],
                                                       strict=True))]

    def _matching_ids(self, collection: Any, ids: list[str] | None, where: dict[str, Any] | None) -> list[str]:
        return list(collection.get(ids=ids, where=where, include=[])["ids"])

    @_storage_errors_translated
    def delete(self, name: str, ids: Sequence[str]) -> int:
        id_list = validate_ids(ids, unique=False)
        collection = self._collection(name)
        if collection is None or not id_list:
            return 0
        found = self._matching_ids(collection, list(dict.fromkeys(id_list)), None)
        if found:
            collection.delete(ids=found)
        return len(found)

    @_storage_errors_translated
    def delete_where(self, name: str, where: Mapping[str, Any]) -> int:
        chroma_where = _chroma_where(where)
        if chroma_where is None:
            raise InvalidInput("delete_where needs a non-empty filter (use delete_collection to drop all)",
                               param="where")
        collection = self._collection(name)
        if collection is None:
            return 0
        found = self._matching_ids(collection, None, chroma_where)
        if found:
            collection.delete(ids=found)
        return len(found)

    @_storage_errors_translated
    def count(self, name: str, where: Mapping[str, Any] | None = None) -> int:
        chroma_where = _chroma_where(where)
        collection = self._collection(name)
        if collection is None:
            return 0
        if chroma_where is None:
            return int(collection.count())
        return len(self._matching_ids(collection, None, chroma_where))

    @_storage_errors_translated
    def delete_collection(self, name: str) -> bool:
        if self._collection(name) is None:
            return False
        self._client.delete_collection(name=name)
        return True

    @_storage_errors_translated
    def list_collections(self) -> list[str]:
        return sorted(c.name for c in self._client.list_collections())

    def close(self) -> None:
        """Nothing to release: the client belongs to the `ChromaClientManager`."""
