"""Host RAG route: `POST /rag/search` over the caller's media in vector, fts or hybrid mode.
Thin: one `RAGSearchService` call."""

from __future__ import annotations

from fastapi import APIRouter

from tldw_Server_API.app.api.v1 import API_V1_PREFIX
from tldw_Server_API.app.api.v1.deps import CurrentUser, RAGServiceDep
from tldw_Server_API.app.api.v1.schemas.rag import RAGResult, RAGSearchRequest, RAGSearchResponse

router = APIRouter(prefix=API_V1_PREFIX, tags=["rag"])


@router.post("/rag/search", response_model=RAGSearchResponse)
async def rag_search(body: RAGSearchRequest, user: CurrentUser, rag: RAGServiceDep) -> RAGSearchResponse:
    results = await rag.search(user.id, body.to_request())
    return RAGSearchResponse(query=body.query, mode=body.mode, data=[RAGResult.of(r) for r in results])
