"""What every pipeline stage handler receives: the `StageContext` (stores, embedder, clock) and
the handler contract `handle(message, context) -> next messages`.

Handlers are plain functions over typed messages (`queue_schemas.py`); delivery (the in-process
executor in `job_manager.py` today, Redis Streams later) lives outside them, so the same handler
runs under either. Workers import this module, never each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from tldw_Server_API.app.core.Chunking import OffsetsTokenizer
from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDBFactory
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
    default_model: str | None = None      # its collection keeps the documented name
    # (provider, model) -> the tokenizer that cuts `tokens` chunks to the model's window (sync, may load)
    tokenizer_for: Callable[[str, str], OffsetsTokenizer] | None = None
    max_chunks_per_batch: int = 64
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


def media_collection(user_id: str, model_id: str, default_model: str | None) -> str:
    """The user's media collection for a model: the documented `user_<id>_media_embeddings` for the
    default model, a suffixed one per other model (a collection has one vector width)."""
    from hashlib import sha1

    from tldw_Server_API.app.core.Embeddings.ChromaDB_Library import media_collection_name

    base = media_collection_name(user_id)
    if default_model is None or model_id == default_model:
        return base
    return f"{base}_{sha1(model_id.encode()).hexdigest()[:10]}"
