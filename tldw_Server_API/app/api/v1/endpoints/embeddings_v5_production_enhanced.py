"""OpenAI-compatible embeddings routes and their admin routes, mounted under /api/v1. Thin: each
handler parses its request model, calls one `EmbeddingService` method and renders the result;
errors are translated by the shared table in `api/v1/errors.py`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Request
from starlette.responses import Response

from tldw_Server_API.app.api.v1.deps import (
    AdminUser,
    AuditedAdmin,
    CurrentUser,
    EmbeddingServiceDep,
    HealthServiceDep,
    OperationsDep,
)
from tldw_Server_API.app.api.v1.routing import v1_router
from tldw_Server_API.app.api.v1.schemas.embeddings import (
    CacheCleared,
    EmbeddingRequest,
    EmbeddingResponse,
    HealthResponse,
    ModelCard,
    ModelList,
    ModelRequest,
    OpenAIModel,
    OpenAIModelList,
    end_user_for_log,
    model_card,
    openai_model,
    render_embeddings,
)

router = v1_router("embeddings")


@router.post("/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(
    body: EmbeddingRequest, request: Request, user: CurrentUser, service: EmbeddingServiceDep,
    x_provider: Annotated[str | None, Header(alias="x-provider")] = None,
) -> Response:
    request.state.end_user = end_user_for_log(body.user)
    outcome = await service.create_embeddings(body.to_call(x_provider), user)
    request.state.log_inputs, request.state.log_tokens = outcome.input_count, outcome.prompt_tokens
    return render_embeddings(outcome)


@router.get("/models", response_model=OpenAIModelList)
async def openai_models(user: CurrentUser, service: EmbeddingServiceDep) -> OpenAIModelList:
    """OpenAI's `GET /models`: what the caller may embed with (the policy applied), aliases too."""
    return OpenAIModelList(data=[openai_model(name, row, service.started_at)
                                 for name, row in service.served_models(user)])


@router.get("/models/{model_id:path}", response_model=OpenAIModel)
async def openai_model_get(model_id: str, user: CurrentUser, service: EmbeddingServiceDep) -> OpenAIModel:
    name, row = service.served_model(model_id, user)
    return openai_model(name, row, service.started_at)


@router.get("/embeddings/models", response_model=ModelList)
async def list_models(_: CurrentUser, service: EmbeddingServiceDep) -> ModelList:
    return ModelList(data=[model_card(row) for row in service.list_models()])


@router.get("/embeddings/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, _: CurrentUser, service: EmbeddingServiceDep) -> ModelCard:
    return model_card(service.get_model(model_id))


@router.get("/embeddings/health", response_model=HealthResponse)
async def health(service: HealthServiceDep) -> HealthResponse:
    return HealthResponse(**await service.report())


# --- admin ----------------------------------------------------------------------------------------
@router.post("/embeddings/models/warmup", name="model.warmup")
async def warmup_model(body: ModelRequest, _: AuditedAdmin, service: EmbeddingServiceDep) -> dict[str, Any]:
    return await service.warmup(body.model)


@router.post("/embeddings/models/download", name="model.download")
async def download_model(body: ModelRequest, _: AuditedAdmin, service: EmbeddingServiceDep) -> dict[str, Any]:
    return await service.download(body.model)


@router.delete("/embeddings/cache", response_model=CacheCleared, name="cache.clear")
async def clear_cache(_: AuditedAdmin, operations: OperationsDep) -> CacheCleared:
    return CacheCleared(removed=await operations.clear_cache())


@router.get("/embeddings/metrics")
async def embeddings_metrics(_: AdminUser, service: EmbeddingServiceDep) -> dict[str, Any]:
    return service.metrics_snapshot()


@router.get("/embeddings/circuit-breakers")
async def circuit_breakers(_: AdminUser, service: EmbeddingServiceDep) -> dict[str, Any]:
    return {"circuit_breakers": service.circuit_breakers()}


@router.post("/embeddings/circuit-breakers/{provider}/reset", name="breaker.reset")
async def reset_circuit_breaker(provider: str, _: AuditedAdmin, operations: OperationsDep) -> dict[str, Any]:
    """Reset the provider's breaker in this process and (Redis pipeline) in every worker process."""
    return {"provider": provider, "breaker": await operations.reset_breaker(provider)}
