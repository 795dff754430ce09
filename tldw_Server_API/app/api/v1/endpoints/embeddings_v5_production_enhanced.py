"""OpenAI-compatible embeddings routes and their admin routes, mounted under /api/v1. Thin: each
handler parses its request model, calls one `EmbeddingService` method and renders the result;
errors are translated by the shared table in `api/v1/errors.py`.

`POST /embeddings`, the hot route (a search query's whole request is a few ms), takes its caller,
service and `x-provider` header from the request itself instead of as FastAPI dependencies:
FastAPI solves each dependency again per request, which cost ~0.1 ms of the route's ~2 ms of
overhead over the model's own time (measured, `bench/README.md`). The schema still declares
the key and the header for it.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.responses import Response

from tldw_Server_API.app.api.v1.deps import (
    AdminUser,
    AuditedAdmin,
    CurrentUser,
    EmbeddingServiceDep,
    HealthServiceDep,
    OperationsDep,
    authenticates_itself,
    get_current_user,
    services_of,
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


X_PROVIDER = {"name": "x-provider", "in": "header", "required": False, "schema": {"type": "string"},
              "description": "Pins the provider (`huggingface`, `onnx`, `openai`, ...) and turns fallback off."}


@router.post("/embeddings", response_model=EmbeddingResponse, openapi_extra={"parameters": [X_PROVIDER]})
@authenticates_itself
async def create_embeddings(body: EmbeddingRequest, request: Request) -> Response:
    user = await get_current_user(request)
    request.state.end_user = end_user_for_log(body.user)
    call = body.to_call(request.headers.get("x-provider"))
    outcome = await services_of(request).embeddings.create_embeddings(call, user)
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
