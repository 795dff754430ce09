"""Wire models of the host media routes (`/api/v1/media`), and the embedding-option fields shared
with the media embeddings routes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from tldw_Server_API.app.api.v1.schemas.common import WireInt
from tldw_Server_API.app.core.DB_Management.Media_DB import MediaRecord, MediaSummary
from tldw_Server_API.app.core.Embeddings.media_embedding_service import EmbeddingOptions

MediaId = WireInt


class EmbeddingOptionsModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embedding_model: StrictStr | None = Field(None, description="`provider:model` or a bare id (default model).")
    embedding_provider: StrictStr | None = Field(None, description="Provider of `embedding_model`.")
    chunk_size: WireInt | None = Field(
        None, description="Chunk size in the method's units (default CHUNKING_MAX_SIZE: 128 tokens, at most what the "
        "model's window holds; with `tokens`, 0 is the whole window). Over the window: 400.")
    chunk_overlap: WireInt | None = Field(None, description="Overlap in the method's units (default "
                                          "CHUNKING_OVERLAP, at most a fifth of the chunk).")
    chunk_method: Literal["words", "sentences", "paragraphs", "tokens"] | None = Field(
        None, description="tokens (default: sentences packed in the model's own tokens), words, sentences or "
        "paragraphs.")
    force_regenerate: StrictBool = False
    priority: Literal["high", "normal", "low"] = "normal"

    def to_options(self) -> EmbeddingOptions:
        # Only the option fields: subclasses (the JSON add body, batches) carry other fields too.
        return EmbeddingOptions(**self.model_dump(include=set(EmbeddingOptionsModel.model_fields)))


class MediaAddJSON(EmbeddingOptionsModel):
    title: StrictStr | None = Field(None, max_length=512)
    content: StrictStr = Field(..., description="The text of the media item.")
    media_type: StrictStr = Field("text", max_length=32)
    generate_embeddings: StrictBool = True


class MediaItem(BaseModel):
    id: int
    title: str
    media_type: str
    source_filename: str | None
    content_hash: str
    chunk_count: int
    created_at: datetime
    updated_at: datetime
    source_hash: str | None = None
    content: str | None = None

    @classmethod
    def of(cls, record: MediaSummary) -> MediaItem:
        content = record.content if isinstance(record, MediaRecord) else None
        return cls(
            id=record.id, title=record.title, media_type=record.media_type, source_filename=record.source_filename,
            content_hash=record.content_hash, chunk_count=record.chunk_count, created_at=record.created_at,
            updated_at=record.updated_at, source_hash=record.source_hash, content=content,
        )


class MediaUpdateJSON(EmbeddingOptionsModel):
    title: StrictStr | None = Field(None, max_length=512, description="A new title (unchanged when absent).")
    content: StrictStr = Field(..., description="The new text of the media item.")
    generate_embeddings: StrictBool = True


class MediaAddResponse(BaseModel):
    media_id: int
    title: str
    content_hash: str
    job_id: str | None = None
    embedding_status: str | None = None


class MediaList(BaseModel):
    items: list[MediaItem]
    total: int
    limit: int
    offset: int


class MediaDeleted(BaseModel):
    media_id: int
    deleted: bool = True
    vectors_removed: int = 0
