"""OpenAI-compatible embeddings routes, mounted under /api/v1. Thin: each handler parses its
request model, calls one `EmbeddingService` method and renders the result; errors are translated
by the shared table in `api/v1/errors.py`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from tldw_Server_API.app.api.v1 import API_V1_PREFIX
from tldw_Server_API.app.api.v1.deps import CurrentUser, EmbeddingServiceDep
from tldw_Server_API.app.api.v1.schemas.embeddings import (
    EmbeddingRequest,
    EmbeddingResponse,
    HealthResponse,
    ModelCard,
    ModelList,
    end_user_for_log,
    model_card,
    render_embeddings,
)

router = APIRouter(prefix=API_V1_PREFIX, tags=["embeddings"])


@router.post("/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(
    body: EmbeddingRequest, request: Request, _: CurrentUser, service: EmbeddingServiceDep
) -> Response:
    request.state.end_user = end_user_for_log(body.user)
    outcome = await service.create_embeddings(body.to_call())
    request.state.log_inputs, request.state.log_tokens = outcome.input_count, outcome.prompt_tokens
    return render_embeddings(outcome)


@router.get("/embeddings/models", response_model=ModelList)
async def list_models(_: CurrentUser, service: EmbeddingServiceDep) -> ModelList:
    return ModelList(data=[model_card(row) for row in service.list_models()])


@router.get("/embeddings/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, _: CurrentUser, service: EmbeddingServiceDep) -> ModelCard:
    return model_card(service.get_model(model_id))


@router.get("/embeddings/health", response_model=HealthResponse)
async def health(service: EmbeddingServiceDep) -> HealthResponse:
    return HealthResponse(**await service.health())
