"""Wire models of the media embeddings routes (`/api/v1/media/.../embeddings`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from tldw_Server_API.app.api.v1.schemas.common import WireInt
from tldw_Server_API.app.api.v1.schemas.media import EmbeddingOptionsModel, MediaId
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobRecord


class BatchRequest(EmbeddingOptionsModel):
    media_ids: list[MediaId] = Field(..., min_length=1, max_length=1000)


class JobView(BaseModel):
    job_id: str
    user_id: str
    media_id: int
    status: str
    progress: float
    total_chunks: int
    processed_chunks: int
    stored_chunks: int
    truncated_chunks: int = Field(description="Chunks longer than the model's window: their end is not in the "
                                  "vectors. 0 with the default `tokens` chunking, which cuts chunks to fit.")
    embedded_chunks: int = Field(description="Chunks sent to the model.")
    skipped_chunks: int = Field(description="Chunks whose stored vector was reused: text hash and model unchanged "
                                "(REEMBED_SKIP_UNCHANGED).")
    warning: str | None = Field(None, description="Set when the job finished with loss (truncated chunks).")
    embedding_model: str
    embedding_provider: str
    chunk_method: str
    chunk_size: int
    chunk_overlap: int
    priority: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    scheduled_for: datetime | None = Field(None, description="A scheduled re-embed waits until then.")
    idempotency_key: str | None = Field(None, description="Same user, media, content, model and chunking: the "
                                        "same key (a repeated start returns the job already on its way).")

    @classmethod
    def of(cls, job: JobRecord) -> JobView:
        fields = {name: getattr(job, name) for name in cls.model_fields if name != "scheduled_for"}
        fields["status"] = job.status.value
        return cls(**fields, scheduled_for=job.not_before)


class JobAccepted(BaseModel):
    job_id: str
    media_id: int
    status: str
    skipped: bool = False


class JobPage(BaseModel):
    items: list[JobView]
    total: int
    limit: int
    offset: int


class EmbeddingStatus(BaseModel):
    media_id: int
    has_embeddings: bool
    chunk_count: int
    content_hash: str
    embedding_model: str | None
    embedding_provider: str | None
    job: JobView | None

    @classmethod
    def of(cls, status: dict[str, Any]) -> EmbeddingStatus:
        job = status.pop("job")
        return cls(**status, job=JobView.of(job) if job else None)


class MediaSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr
    top_k: WireInt = 10
    media_ids: list[MediaId] | None = Field(None, max_length=1000)
    filters: dict[str, Any] | None = None
