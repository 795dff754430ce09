"""Wire models of the embeddings endpoints (OpenAI's shapes) and the response renderers.

`input` is typed `Any` on purpose: its four accepted shapes are checked by the core's
`normalize_input`, which names the offending index. Unknown extra fields are ignored, as many
OpenAI-compatible servers do, so clients that send newer parameters keep working.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from starlette.responses import Response

from tldw_Server_API.app.api.v1.schemas.common import WireInt
from tldw_Server_API.app.core.Embeddings.embedding_service import EmbeddingCall, EmbeddingOutcome
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import ModelListing
from tldw_Server_API.app.core.Embeddings.input_processing import index_ranges


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: Any = Field(..., description="A string, array of strings, token array, or array of token arrays.")
    model: StrictStr = Field(..., min_length=1, description="`provider:model` or a bare model id.")
    encoding_format: Literal["float", "base64"] | None = Field("float", description="float or base64.")
    dimensions: WireInt | None = Field(None, description="Output width (native or per the dimension policy).")
    user: StrictStr | None = Field(None, max_length=256, description="End-user id, logged as an id only.")
    truncate: StrictBool | None = Field(
        None, description="Extension: inputs longer than the model's window are truncated (true, the default: "
        "EMBEDDINGS_TRUNCATE) and listed in `X-Embeddings-Truncated`, or refused with 400 (false)."
    )
    long_input: Literal["truncate", "mean"] | None = Field(
        None, description="Extension: a long input is its first window (truncate, the default: "
        "EMBEDDINGS_LONG_INPUT) or the token-weighted mean of its window-sized pieces (mean)."
    )

    def to_call(self, provider_header: str | None = None) -> EmbeddingCall:
        return EmbeddingCall(
            input=self.input, model=self.model, encoding_format=self.encoding_format or "float",
            dimensions=self.dimensions, user=self.user, truncate=self.truncate, provider_header=provider_header,
            long_input=self.long_input,
        )


class ModelRequest(BaseModel):
    model: StrictStr = Field(..., min_length=1, description="`provider:model` or a bare model id.")


class CacheCleared(BaseModel):
    removed: int


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str
    provider: str
    dimension: int | None
    max_tokens: int | None
    available: bool
    loaded: bool
    default: bool


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIModel(BaseModel):
    """OpenAI's model object (`GET /v1/models`)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


def openai_model(name: str, row: ModelListing | None, created: int) -> OpenAIModel:
    return OpenAIModel(id=name, created=created, owned_by=row.info.provider if row is not None else "alias")


class HealthResponse(BaseModel):
    status: Literal["healthy", "degraded", "loading"]
    providers: dict[str, Any]
    loaded_models: list[str]
    circuit_breakers: dict[str, Any]
    cache: dict[str, Any]
    engine_choice: dict[str, Any] | None = None
    components: dict[str, ComponentStatus]


class ComponentStatus(BaseModel):
    status: Literal["ok", "unavailable"]
    latency_ms: float
    detail: str | None


class Readiness(BaseModel):
    status: Literal["ready"]
    components: dict[str, ComponentStatus]


class Liveness(BaseModel):
    status: Literal["alive"]


def render_embeddings(outcome: EmbeddingOutcome) -> Response:
    """orjson writes float32 rows at float32 precision (shortest repr), straight from numpy."""
    payload = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(outcome.embeddings)
        ],
        "model": outcome.model,
        "usage": {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens},
    }
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers=embedding_headers(outcome),
    )


def embedding_headers(outcome: EmbeddingOutcome) -> dict[str, str]:
    headers = {"X-Embeddings-Provider": outcome.provider, "X-Cache": outcome.cache,
               "X-Embeddings-Truncated": str(len(outcome.truncated))}
    if outcome.engine:
        headers["X-Embeddings-Engine"] = outcome.engine
    if outcome.truncated:
        headers["X-Embeddings-Truncated-Inputs"] = index_ranges(outcome.truncated)
    if outcome.pooled:
        headers["X-Embeddings-Pooled"] = str(len(outcome.pooled))
        headers["X-Embeddings-Pooled-Inputs"] = index_ranges(outcome.pooled)
    if outcome.fallback_from:
        headers["X-Embeddings-Fallback-From"] = outcome.fallback_from
    if outcome.rate_limit is not None:
        headers["X-RateLimit-Limit"] = str(outcome.rate_limit.limit)
        headers["X-RateLimit-Remaining"] = str(outcome.rate_limit.remaining)
    return headers


def model_card(row: ModelListing) -> ModelCard:
    return ModelCard(
        id=row.info.model_id, owned_by=row.info.provider, provider=row.info.provider,
        dimension=row.info.dimension, max_tokens=row.info.max_tokens,
        available=row.available, loaded=row.loaded, default=row.default,
    )


_END_USER = re.compile(r"[^A-Za-z0-9_.@:-]")


def end_user_for_log(user: str | None) -> str | None:
    """The OpenAI `user` field as a log-safe id: restricted charset, bounded length."""
    return _END_USER.sub("_", user)[:64] if user else None
