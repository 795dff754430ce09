"""RAG search over one user's media: `vector` (query embedding -> the user's media collection),
`fts` (SQLite FTS5 BM25 over media chunks) and `hybrid` (both, fused by reciprocal rank).

Soft-deleted media never appear: FTS rows go at delete time, and vector hits are checked against
the media DB before they are returned; when that leaves fewer hits than wanted (a deleted
document's vectors stay until purged), the store is asked again, deeper. Metadata `filters` use
the vector stores' where-language and apply to both modes (FTS hits are checked against the same
fields). No FastAPI here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from tldw_Server_API.app.core.DB_Management.Media_DB import FtsHit, MediaDB, MediaDBFactory
from tldw_Server_API.app.core.errors import InvalidInput
from tldw_Server_API.app.core.RAG.fusion import reciprocal_rank_fusion
from tldw_Server_API.app.core.RAG.vector_stores.base import MAX_TOP_K as MAX_STORE_TOP_K
from tldw_Server_API.app.core.RAG.vector_stores.base import VectorHit
from tldw_Server_API.app.core.RAG.vector_stores.factory import VectorStoreFactory
from tldw_Server_API.app.core.RAG.vector_stores.filters import matches, parse_where

SearchMode = Literal["vector", "fts", "hybrid"]
MAX_TOP_K = 100
QueryEmbedder = Callable[[str, str], Awaitable[tuple[np.ndarray, str]]]   # (user, query) -> (vector, collection)


@dataclass(frozen=True)
class SearchRequest:
    query: str
    top_k: int = 10
    mode: SearchMode = "hybrid"
    media_ids: list[int] | None = None
    filters: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SearchResult:
    media_id: int
    title: str
    chunk_index: int
    text: str
    start_char: int
    end_char: int
    score: float
    page: int | None = None      # 1-based page the chunk starts on (paged sources: PDF)

    @property
    def key(self) -> tuple[int, int]:
        return self.media_id, self.chunk_index


def validate_request(request: SearchRequest) -> Any:
    if not request.query or not request.query.strip():
        raise InvalidInput("'query' must not be empty", param="query")
    if not 1 <= request.top_k <= MAX_TOP_K:
        raise InvalidInput(f"'top_k' must be between 1 and {MAX_TOP_K}", param="top_k")
    if request.mode not in ("vector", "fts", "hybrid"):
        raise InvalidInput("'mode' must be vector, fts or hybrid", param="mode")
    if request.filters is not None and not isinstance(request.filters, Mapping):
        raise InvalidInput("'filters' must be an object", param="filters")
    try:
        return parse_where(request.filters) if request.filters else None
    except InvalidInput as exc:   # the wire field is `filters`
        raise InvalidInput(exc.message, param="filters") from None


def _where(media_ids: list[int] | None, filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    parts: list[dict[str, Any]] = []
    if media_ids:
        parts.append({"media_id": {"$in": list(media_ids)}})
    if filters:
        parts.append(dict(filters))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else {"$and": parts}


class RAGSearchService:
    def __init__(self, media_dbs: MediaDBFactory, vector_stores: VectorStoreFactory, embed_query: QueryEmbedder):
        self._media_dbs = media_dbs
        self._vector_stores = vector_stores
        self._embed_query = embed_query

    async def search(self, user_id: str, request: SearchRequest) -> list[SearchResult]:
        parsed_filter = validate_request(request)
        if request.media_ids is not None and not request.media_ids:
            return []   # restricted to no media: nothing in every mode (vector mode used to ignore it)
        db = self._media_dbs.get(user_id)
        depth = min(MAX_TOP_K * 2, request.top_k * 3)   # the ranked lists hybrid fuses
        vector_hits: list[SearchResult] = []
        fts_hits: list[SearchResult] = []
        if request.mode in ("vector", "hybrid"):
            wanted = request.top_k if request.mode == "vector" else depth
            vector_hits = await self._vector(user_id, db, request, wanted)
        if request.mode in ("fts", "hybrid"):
            raw = await asyncio.to_thread(db.search_chunks_fts, request.query, depth, request.media_ids)
            fts_hits = [_from_fts(hit) for hit in raw if matches(parsed_filter, _fts_fields(hit))]
        if request.mode == "vector":
            return vector_hits[: request.top_k]
        if request.mode == "fts":
            return fts_hits[: request.top_k]
        by_key = {hit.key: hit for hit in fts_hits} | {hit.key: hit for hit in vector_hits}
        fused = reciprocal_rank_fusion([[h.key for h in vector_hits], [h.key for h in fts_hits]], top_k=request.top_k)
        return [_with_score(by_key[key], score) for key, score in fused]

    async def _vector(self, user_id: str, db: MediaDB, request: SearchRequest, wanted: int) -> list[SearchResult]:
        """The `wanted` best hits of live media: one store query of that depth, deeper ones only
        while hits of deleted media left too few."""
        vector, collection = await self._embed_query(user_id, request.query)
        store = self._vector_stores.for_user(user_id)
        where = _where(request.media_ids, request.filters)
        depth = wanted

        def query(depth: int) -> tuple[list[VectorHit], set[int]]:   # one thread hop for both lookups
            hits = store.query(collection, vector, depth, where)
            return hits, db.live_media_ids({int(h.metadata.get("media_id", -1)) for h in hits})

        while True:
            hits, live = await asyncio.to_thread(query, depth)
            results = [_from_vector(hit) for hit in hits if int(hit.metadata.get("media_id", -1)) in live]
            if len(results) >= wanted or len(hits) < depth or depth >= MAX_STORE_TOP_K:
                return results[:wanted]
            depth = min(MAX_STORE_TOP_K, depth * 4)


def _from_vector(hit: VectorHit) -> SearchResult:
    meta = hit.metadata
    return SearchResult(
        media_id=int(meta.get("media_id", -1)), title=str(meta.get("title", "")),
        chunk_index=int(meta.get("chunk_index", 0)), text=hit.document, start_char=int(meta.get("start_char", 0)),
        end_char=int(meta.get("end_char", 0)), score=float(hit.score),
        page=int(meta["page"]) if meta.get("page") is not None else None,
    )


def _fts_fields(hit: FtsHit) -> dict[str, Any]:
    fields = {"media_id": hit.media_id, "chunk_index": hit.chunk_index, "start_char": hit.start_char,
              "end_char": hit.end_char, "title": hit.title}
    return fields if hit.page is None else {**fields, "page": hit.page}


def _from_fts(hit: FtsHit) -> SearchResult:
    return SearchResult(hit.media_id, hit.title, hit.chunk_index, hit.text, hit.start_char, hit.end_char,
                        float(hit.score), hit.page)


def _with_score(result: SearchResult, score: float) -> SearchResult:
    return replace(result, score=score)
