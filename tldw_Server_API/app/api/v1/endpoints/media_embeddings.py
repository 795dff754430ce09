"""Media embeddings routes: start a job for a media item (202 + job id), its status, delete its
vectors, batch starts, job reads/list/cancel, the caller's tier usage, vector search over the
caller's media; admin: the pipeline summary and stage pause/drain/resume.
Thin: one service call per handler; errors go through the shared table.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Query

from tldw_Server_API.app.api.v1.deps import (
    AdminUser,
    AuditedAdmin,
    CurrentUser,
    MediaEmbeddingServiceDep,
    RAGServiceDep,
)
from tldw_Server_API.app.api.v1.routing import v1_router
from tldw_Server_API.app.api.v1.schemas.common import MediaIdPath, Offset
from tldw_Server_API.app.api.v1.schemas.media import EmbeddingOptionsModel
from tldw_Server_API.app.api.v1.schemas.media_embeddings import (
    BatchRequest,
    EmbeddingStatus,
    JobAccepted,
    JobPage,
    JobView,
    MediaSearchRequest,
)
from tldw_Server_API.app.api.v1.schemas.rag import RAGResult, RAGSearchResponse
from tldw_Server_API.app.core.RAG.search import SearchRequest

router = v1_router("media-embeddings")


@router.post("/media/{media_id}/embeddings", response_model=JobAccepted, status_code=202)
async def start_embedding(
    media_id: MediaIdPath, user: CurrentUser, service: MediaEmbeddingServiceDep,
    body: Annotated[EmbeddingOptionsModel | None, Body()] = None,
) -> JobAccepted:
    result = await service.start(user, media_id, (body or EmbeddingOptionsModel.model_validate({})).to_options())
    return JobAccepted(job_id=result.job.job_id, media_id=media_id, status=result.job.status.value,
                       skipped=result.skipped)


@router.get("/media/{media_id}/embeddings/status", response_model=EmbeddingStatus)
async def embedding_status(
    media_id: MediaIdPath, user: CurrentUser, service: MediaEmbeddingServiceDep
) -> EmbeddingStatus:
    return EmbeddingStatus.of(await service.status(user, media_id))


@router.delete("/media/{media_id}/embeddings")
async def delete_embeddings(
    media_id: MediaIdPath, user: CurrentUser, service: MediaEmbeddingServiceDep
) -> dict[str, Any]:
    return {"media_id": media_id, "deleted": await service.delete_embeddings(user, media_id)}


@router.post("/media/embeddings/batch", status_code=202)
async def batch_embeddings(body: BatchRequest, user: CurrentUser, service: MediaEmbeddingServiceDep) -> dict[str, Any]:
    return await service.start_batch(user, list(body.media_ids), body.to_options())


@router.get("/media/embeddings/jobs/{job_id}", response_model=JobView)
async def get_job(job_id: str, user: CurrentUser, service: MediaEmbeddingServiceDep) -> JobView:
    return JobView.of(service.get_job(user, job_id))


@router.post("/media/embeddings/jobs/{job_id}/cancel", response_model=JobView)
async def cancel_job(job_id: str, user: CurrentUser, service: MediaEmbeddingServiceDep) -> JobView:
    return JobView.of(service.cancel_job(user, job_id))


@router.get("/media/embeddings/usage")
async def embedding_usage(user: CurrentUser, service: MediaEmbeddingServiceDep) -> dict[str, Any]:
    """The caller's tier, its daily chunk quota and concurrent-job cap, and what is used of them."""
    return await service.usage(user)


@router.get("/media/embeddings/jobs", response_model=JobPage)
async def list_jobs(
    user: CurrentUser, service: MediaEmbeddingServiceDep, status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Offset = 0,
) -> JobPage:
    items, total = service.list_jobs(user, status, limit, offset)
    return JobPage(items=[JobView.of(j) for j in items], total=total, limit=limit, offset=offset)


@router.post("/media/embeddings/search", response_model=RAGSearchResponse)
async def search_embeddings(body: MediaSearchRequest, user: CurrentUser, rag: RAGServiceDep) -> RAGSearchResponse:
    request = SearchRequest(query=body.query, top_k=body.top_k, mode="vector", media_ids=body.media_ids,
                            filters=body.filters)
    results = await rag.search(user.id, request)
    return RAGSearchResponse(query=body.query, mode="vector", data=[RAGResult.of(r) for r in results])


@router.get("/embeddings/orchestrator/summary")
async def pipeline_summary(_: AdminUser, service: MediaEmbeddingServiceDep) -> dict[str, Any]:
    """Admin: the pipeline per stage (lag, pending, oldest pending idle, DLQ depth, workers,
    handled) and the orchestrator's last report (Redis mode)."""
    return await service.pipeline_summary()


@router.post("/embeddings/orchestrator/stages/{stage}/{action}", name="stage.{action}")
async def control_stage(stage: str, action: str, _: AuditedAdmin, service: MediaEmbeddingServiceDep) -> dict[str, Any]:
    """Admin: `pause` a stage (nothing new is taken; messages wait), `drain` it (work until nothing
    waits, then stop; Redis workers exit), or `resume` it. Holds for every worker of the deployment."""
    return await service.control_stage(stage, action)
