"""What every pipeline stage handler receives, and the adapters that give it the embedding engine.

`StageContext` (stores, jobs DB, embedder, tokenizers, clock) is passed to each `handle(message, context)`;
`ServiceEmbedder` embeds a stage's chunk texts with the job's model and `MediaQueryEmbedder` a
search query with the default model, both through `EmbeddingService`. `media_collection` names a
user's media collection per model and `media_collections` picks them out of a store's names.
Imports core services only; no FastAPI, no delivery.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from tldw_Server_API.app.core.Chunking import OffsetsTokenizer
from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDBFactory
from tldw_Server_API.app.core.Embeddings.embedding_service import EmbeddingService
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import same_vectors
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobsDB
from tldw_Server_API.app.core.RAG.vector_stores.factory import VectorStoreFactory


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray      # (n, d) float32, L2-normalised
    provider: str
    model_id: str
    truncated: int = 0       # texts longer than the model's window (their end is not in the vector)


class Embedder(Protocol):
    def __call__(self, user_id: str, provider: str, model: str, texts: list[str]) -> Awaitable[Embedded]: ...


@dataclass(frozen=True)
class StageContext:
    media_dbs: MediaDBFactory
    vector_stores: VectorStoreFactory
    embed: Embedder
    jobs: JobsDB                          # job state: the stages advance, count and complete their job
    default_model: str | None = None      # its collection keeps the documented name
    # (provider, model) -> the tokenizer that cuts `tokens` chunks to the model's window (sync, may load)
    tokenizer_for: Callable[[str, str], OffsetsTokenizer] | None = None
    max_chunks_per_batch: int = 64
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    reset_breaker: Callable[[str], object] | None = None   # an operator's breaker reset, broadcast to workers


def media_collection(user_id: str, model_id: str, default_model: str | None) -> str:
    """The user's media collection for a model: the documented `user_<id>_media_embeddings` for the
    default model (and its `@fp32`, which stores the same vectors: a default changed from
    `onnx:<id>@fp32` to `<id>` keeps its collection), a suffixed one per other model (a collection
    has one vector width)."""
    from hashlib import sha1

    from tldw_Server_API.app.core.Embeddings.ChromaDB_Library import media_collection_name

    base = media_collection_name(user_id)
    if default_model is None or same_vectors(model_id, default_model):
        return base
    return f"{base}_{sha1(model_id.encode()).hexdigest()[:10]}"


def media_collections(user_id: str, names: Iterable[str]) -> list[str]:
    """Those of a user's collections that hold media vectors, every model's: their names start
    with the default model's (storage stage, settle, vector purge and the compactor share this)."""
    prefix = media_collection(user_id, "", None)
    return sorted(name for name in names if name.startswith(prefix))


class ServiceEmbedder:
    """The `Embedder` of the stages: one provider and model, no fallback (stored vectors never mix
    models), policy checked when the job was created; counts the texts cut to the model's window."""

    def __init__(self, embeddings: EmbeddingService) -> None:
        self._embeddings = embeddings

    async def __call__(self, user_id: str, provider: str, model: str, texts: list[str]) -> Embedded:  # noqa: ARG002
        result = await self._embeddings.embed_texts(f"{provider}:{model}", texts, None)
        return Embedded(result.vectors, result.provider, result.model_id, len(result.truncated))


class MediaQueryEmbedder:
    """RAG search's query embedder: the default model's vector of a query, and the user's media
    collection of that model."""

    def __init__(self, embeddings: EmbeddingService, default_model: str, provider: str | None = None) -> None:
        self._embeddings = embeddings
        self._default_model = default_model
        self._name = f"{provider}:{default_model}" if provider else default_model   # a remote default too

    async def __call__(self, user_id: str, query: str) -> tuple[np.ndarray, str]:
        result = await self._embeddings.embed_texts(self._name, [query], None)
        return result.vectors[0], media_collection(user_id, result.model_id, self._default_model)
