"""Typed, versioned messages of the three pipeline stages (chunking -> embedding -> storage) and
their pure codec: `encode` / `decode` (JSON, schema version checked), `chunk_id`, vector packing
(float32 base64) and `split_into_batches` for bounded sub-batches of large documents.

Pure: imports pydantic, numpy, orjson and core errors; no Redis, no I/O, no clock reads (callers
pass `created_at`). Messages forbid unknown fields: any schema change bumps `SCHEMA_VERSION`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, TypeVar

import numpy as np
import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from tldw_Server_API.app.core.Chunking import ChunkingOptions
from tldw_Server_API.app.core.errors import InvalidInput

# 2: chunk `page`; 3: job id on stored chunks, page starts, idempotency key, trace id, attempt;
# 4: the daily chunk quota on chunking messages; 5: `reuse_unchanged` and each chunk's `chunk_hash`
SCHEMA_VERSION: Final = 5
# Older versions still read: what they lack has a default (jobs queued before an upgrade go on).
UPGRADABLE_VERSIONS: Final = frozenset({3, 4})
Priority = Literal["high", "normal", "low"]
ChunkMethod = Literal["words", "sentences", "paragraphs", "tokens"]
T = TypeVar("T")


class MessageSchemaError(InvalidInput):
    """A queue payload that is not a valid message of this schema (dead-letter it, never retry)."""

    code = "invalid_message"


class UnsupportedSchemaVersion(MessageSchemaError):
    code = "unsupported_schema_version"


def chunk_id(media_id: int, index: int) -> str:
    """Deterministic vector id of a media chunk: re-runs overwrite, never duplicate."""
    return f"media_{media_id}_chunk_{index}"


def chunk_hash(text: str) -> str:
    """The hash of a chunk's text stored beside its vector: an unchanged chunk (same hash, same
    model) reuses its vector instead of being embedded again."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def split_into_batches(items: Sequence[T], max_per_batch: int) -> list[list[T]]:
    """Consecutive sub-batches of at most `max_per_batch` items, every item once, in order."""
    if max_per_batch < 1:
        raise InvalidInput("max_per_batch must be >= 1", param="max_per_batch")
    return [list(items[i : i + max_per_batch]) for i in range(0, len(items), max_per_batch)]


def pack_vectors(vectors: np.ndarray | Sequence[Sequence[float]]) -> tuple[str, int]:
    """Row-major little-endian float32 bytes, base64: (payload, dimension)."""
    array = np.asarray(vectors, dtype="<f4")
    if array.ndim != 2:
        raise InvalidInput("vectors must be a 2-D array", param="vectors")
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii"), int(array.shape[1])


def unpack_vectors(payload: str, count: int, dimension: int) -> np.ndarray:
    """The (count, dimension) float32 array of `pack_vectors`; InvalidInput on a size mismatch."""
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageSchemaError("vectors are not valid base64", param="vectors_b64") from exc
    if len(raw) != count * dimension * 4:
        raise MessageSchemaError("vectors size does not match count x dimension", param="vectors_b64")
    return np.frombuffer(raw, dtype="<f4").reshape(count, dimension).astype(np.float32)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChunkOptions(_Model):
    method: ChunkMethod = "words"
    size: Annotated[int, Field(ge=1)] = 1000
    overlap: Annotated[int, Field(ge=0)] = 200
    max_chunks: Annotated[int, Field(ge=1)] | None = None   # the job's cap (CHUNKING_MAX_CHUNKS)

    def to_chunking(self) -> ChunkingOptions:
        return ChunkingOptions(self.method, self.size, self.overlap, self.max_chunks)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkOptions:
        if self.overlap >= self.size:
            raise ValueError("overlap must be smaller than size")
        return self


class ChunkPayload(_Model):
    """One chunk of a media item's text with its character span in the original."""

    chunk_index: Annotated[int, Field(ge=0)]
    text: str
    start_char: Annotated[int, Field(ge=0)]
    end_char: Annotated[int, Field(ge=0)]
    page: Annotated[int, Field(ge=1)] | None = None    # 1-based page it starts on (paged sources: PDF)


class ChunkMetadata(_Model):
    """The metadata stored beside each chunk vector (ARCHITECTURE.md section 4). `job_id` names the
    job that wrote it: a job's stored count is read from the store, never kept beside it."""

    media_id: int
    job_id: str
    chunk_index: Annotated[int, Field(ge=0)]
    start_char: Annotated[int, Field(ge=0)]
    end_char: Annotated[int, Field(ge=0)]
    content_hash: str
    embedding_model: str
    embedding_provider: str
    embedding_dimension: Annotated[int, Field(ge=1)]
    title: str | None = None
    created_at: AwareDatetime
    page: Annotated[int, Field(ge=1)] | None = None
    chunk_hash: str = ""          # `chunk_hash` of the chunk's text ("" in vectors written before v5)

    def to_store_dict(self) -> dict[str, str | int]:
        """Flat scalars for vector stores (Chroma refuses None): title "" when absent, no page key
        when the source has no pages, ISO time."""
        values = self.model_dump(mode="json")
        values["title"] = values["title"] or ""
        if values["page"] is None:
            del values["page"]
        return values


class _StageMessage(_Model):
    schema_version: Literal[5] = SCHEMA_VERSION
    job_id: str
    user_id: str
    media_id: int
    priority: Priority = "normal"
    created_at: AwareDatetime
    idempotency_key: str = ""          # the job's: the same content and model never enqueue twice
    trace_id: str | None = None        # carried from the request that created the job
    attempt: Annotated[int, Field(ge=0)] = 0   # redeliveries so far (informative; the broker counts too)
    # Reuse the stored vector of a chunk whose text hash and model are unchanged (REEMBED_SKIP_UNCHANGED).
    reuse_unchanged: bool = False


class ChunkingMessage(_StageMessage):
    """Chunk one media item. `content` (with its `page_starts`) travels in the message when the
    worker may not reach the media DB (the Redis pipeline); otherwise the text is read there."""

    stage: Literal["chunking"] = "chunking"
    content_hash: str
    chunk_options: ChunkOptions
    embedding_model: str
    embedding_provider: str
    title: str | None = None
    content: str | None = None
    page_starts: list[Annotated[int, Field(ge=0)]] | None = None
    daily_chunk_quota: Annotated[int, Field(ge=0)] = 0   # the user's tier allowance when created; 0: none


class EmbeddingMessage(_StageMessage):
    """Embed one sub-batch (`batch_index` of `batch_count`) of a media item's chunks."""

    stage: Literal["embedding"] = "embedding"
    content_hash: str
    embedding_model: str
    embedding_provider: str
    title: str | None = None
    chunks: list[ChunkPayload]
    batch_index: Annotated[int, Field(ge=0)] = 0
    batch_count: Annotated[int, Field(ge=1)] = 1
    total_chunks: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _batch_in_range(self) -> EmbeddingMessage:
        if self.batch_index >= self.batch_count:
            raise ValueError("batch_index must be smaller than batch_count")
        return self


class StorageMessage(_StageMessage):
    """Store one sub-batch of vectors: ids, texts and metadata line up row by row."""

    stage: Literal["storage"] = "storage"
    chunk_ids: list[str]
    documents: list[str]
    vectors_b64: str
    dimension: Annotated[int, Field(ge=1)]
    metadatas: list[ChunkMetadata]
    batch_index: Annotated[int, Field(ge=0)] = 0
    batch_count: Annotated[int, Field(ge=1)] = 1
    total_chunks: Annotated[int, Field(ge=0)]
    truncated_chunks: Annotated[int, Field(ge=0)] = 0   # of this batch: longer than the model's window

    @model_validator(mode="after")
    def _rows_line_up(self) -> StorageMessage:
        count = len(self.chunk_ids)
        if len(self.documents) != count or len(self.metadatas) != count:
            raise ValueError("chunk_ids, documents and metadatas must have the same length")
        if self.batch_index >= self.batch_count:
            raise ValueError("batch_index must be smaller than batch_count")
        try:
            unpack_vectors(self.vectors_b64, count, self.dimension)
        except MessageSchemaError as exc:
            raise ValueError(exc.message) from None
        return self

    def vectors(self) -> np.ndarray:
        """The (len(chunk_ids), dimension) float32 vectors."""
        return unpack_vectors(self.vectors_b64, len(self.chunk_ids), self.dimension)


PipelineMessage = ChunkingMessage | EmbeddingMessage | StorageMessage
MESSAGE_TYPES: dict[str, type[ChunkingMessage] | type[EmbeddingMessage] | type[StorageMessage]] = {
    "chunking": ChunkingMessage,
    "embedding": EmbeddingMessage,
    "storage": StorageMessage,
}


def encode(message: PipelineMessage) -> bytes:
    """JSON bytes of a message (every field, the schema version and stage included)."""
    return orjson.dumps(message.model_dump(mode="json"))


def _describe(error: ValidationError) -> str:
    """Field locations and reasons only: pydantic's own text would echo the (raw) input values."""
    parts = [f"{'.'.join(str(p) for p in item['loc']) or 'message'}: {item['msg']}" for item in error.errors()]
    return "; ".join(parts[:5])


def decode(data: bytes | str) -> PipelineMessage:
    """The message in `data`; UnsupportedSchemaVersion for another version, MessageSchemaError
    for anything else that is not a valid message."""
    try:
        payload: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MessageSchemaError("message is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise MessageSchemaError("message must be a JSON object")
    version = payload.get("schema_version")
    if version in UPGRADABLE_VERSIONS and type(version) is int:
        payload["schema_version"] = version = SCHEMA_VERSION
    if version != SCHEMA_VERSION:
        raise UnsupportedSchemaVersion(
            f"unsupported message schema_version {repr(version)[:32]} (this worker reads {SCHEMA_VERSION})",
            param="schema_version",
        )
    model = MESSAGE_TYPES.get(str(payload.get("stage")))
    if model is None:
        raise MessageSchemaError(f"unknown message stage (one of {', '.join(MESSAGE_TYPES)})", param="stage")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise MessageSchemaError(f"invalid {model.__name__}: {_describe(exc)}") from exc
