"""Host RAG route: `POST /rag/search` over the caller's media in vector, fts or hybrid mode.
Thin: one `RAGSearchService` call."""

from __future__ import annotations

from tldw_Server_API.app.api.v1.deps import CurrentUser, RAGServiceDep
from tldw_Server_API.app.api.v1.routing import v1_router
from tldw_Server_API.app.api.v1.schemas.rag import RAGResult, RAGSearchRequest, RAGSearchResponse

router = v1_router("rag")


@router.post("/rag/search", response_model=RAGSearchResponse)
async def rag_search(body: RAGSearchRequest, user: CurrentUser, rag: RAGServiceDep) -> RAGSearchResponse:
    results = await rag.search(user.id, body.to_request())
    return RAGSearchResponse(query=body.query, mode=body.mode, data=[RAGResult.of(r) for r in results])
