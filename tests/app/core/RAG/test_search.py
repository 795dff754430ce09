"""`RAGSearchService` in vector mode over a real media DB and the in-memory Chroma store, with a
fixed query vector injected as the query embedder: the store is asked for `top_k` only, and asked
again deeper when hits of soft-deleted media (whose vectors stay until purged) leave too few."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDBFactory
from tldw_Server_API.app.core.Embeddings.ChromaDB_Library import media_chunk_id, media_collection_name
from tldw_Server_API.app.core.RAG.search import RAGSearchService, SearchRequest
from tldw_Server_API.app.core.RAG.vector_stores.factory import ChromaVectorStoreFactory

USER = "search-user"
QUERY = np.array([1.0, 0.0, 0.0], dtype=np.float32)


class CountingFactory:
    """The stub-backed store factory, recording the depth of every query."""

    def __init__(self, inner: ChromaVectorStoreFactory) -> None:
        self.inner = inner
        self.depths: list[int] = []

    def for_user(self, user_id: str) -> Any:
        store = self.inner.for_user(user_id)
        factory = self

        class Recording:
            def __getattr__(self, name: str) -> Any:
                return getattr(store, name)

            def query(self, name: str, vector: Any, top_k: int, where: Any = None) -> Any:
                factory.depths.append(top_k)
                return store.query(name, vector, top_k, where)

        return Recording()


def vector_at(angle: float) -> list[float]:
    return [float(np.cos(angle)), float(np.sin(angle)), 0.0]


@pytest.fixture
def service(tmp_path: Path) -> tuple[RAGSearchService, CountingFactory, dict[str, int]]:
    media = MediaDBFactory(tmp_path)
    db = media.get(USER)
    deleted = db.add_media("Deleted", "gone " * 40, "text", "deleted.txt").id
    live = db.add_media("Live", "kept " * 40, "text", "live.txt").id
    factory = CountingFactory(ChromaVectorStoreFactory(tmp_path, force_stub=True))
    store = factory.inner.for_user(USER)
    name = media_collection_name(USER)
    store.ensure_collection(name, 3)
    records = [(deleted, i, 0.01 * i) for i in range(30)] + [(live, i, 0.5 + 0.01 * i) for i in range(10)]
    store.upsert(name, [media_chunk_id(m, i) for m, i, _ in records], [vector_at(a) for _, _, a in records],
                 documents=[f"chunk {m}/{i}" for m, i, _ in records],
                 metadatas=[{"media_id": m, "chunk_index": i, "title": "t"} for m, i, _ in records])
    db.soft_delete(deleted)

    async def embed_query(user_id: str, query: str) -> tuple[np.ndarray, str]:  # noqa: ARG001
        return QUERY, media_collection_name(user_id)

    yield RAGSearchService(media, factory, embed_query), factory, {"deleted": deleted, "live": live}  # type: ignore[misc]
    media.close_all()


def run_search(service: RAGSearchService, **fields: Any) -> list[Any]:
    return asyncio.run(service.search(USER, SearchRequest(query="q", mode="vector", **fields)))


def test_vector_mode_asks_the_store_for_top_k_only(service: Any) -> None:
    search, factory, ids = service
    results = run_search(search, top_k=5, media_ids=[ids["live"]])   # the filter leaves deleted chunks out
    assert [r.chunk_index for r in results] == [0, 1, 2, 3, 4]
    assert factory.depths == [5]


def test_hits_of_deleted_media_are_refilled_from_deeper_in_the_store(service: Any) -> None:
    search, factory, ids = service
    results = run_search(search, top_k=5)
    assert [(r.media_id, r.chunk_index) for r in results] == [(ids["live"], i) for i in range(5)]
    assert factory.depths[0] == 5 and len(factory.depths) > 1   # 30 deleted chunks rank first
    assert factory.depths == sorted(factory.depths)
