"""Wire models of the vector stores endpoints (OpenAI's object shapes) and their renderers.

Requests carry what OpenAI's API sends plus our vector extensions; unknown fields are ignored so
newer clients keep working. Value rules (widths, filters, limits) live in the core service, which
names the offending field; here only JSON types are checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictStr

from tldw_Server_API.app.api.v1.schemas.common import WireInt
from tldw_Server_API.app.core.Embeddings._sql_engine import MAX_PAGE_SIZE
from tldw_Server_API.app.core.Embeddings.vector_store_batches_db import BatchRecord
from tldw_Server_API.app.core.Embeddings.vector_store_files import FileView
from tldw_Server_API.app.core.Embeddings.vector_store_files_db import FileBatch
from tldw_Server_API.app.core.Embeddings.vector_store_meta_db import VectorStoreRecord
from tldw_Server_API.app.core.Embeddings.vector_store_records import MAX_LIST_VECTORS, VectorInput, hit_source
from tldw_Server_API.app.core.Embeddings.vector_store_service import MediaStoreCall, SearchCall
from tldw_Server_API.app.core.errors import InvalidInput
from tldw_Server_API.app.core.RAG.vector_stores.base import VectorHit, VectorRecord
from tldw_Server_API.app.core.wire import JSONDecodeError, loads_json

Number = WireInt | StrictFloat


PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Items per page.")]
VectorPageLimit = Annotated[int, Query(ge=1, le=MAX_LIST_VECTORS, description="Vectors per page.")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- requests ------------------------------------------------------------------------------------
class VectorStoreCreateRequest(_Request):
    name: StrictStr | None = Field(None, description="Unique per user; optional, as in OpenAI's API.")
    metadata: dict[str, Any] | None = Field(None, description="Up to 16 string pairs (OpenAI's rules).")
    embedding_model: StrictStr | None = Field(None, description="`provider:model` or a bare id; default model.")
    dimensions: WireInt | None = Field(None, description="Vector width; taken from the model when absent.")
    file_ids: list[StrictStr] | None = Field(None, description="Not supported: upsert vectors instead.")

    def check_supported(self) -> None:
        if self.file_ids:
            raise InvalidInput("file_ids are not supported here: upsert vectors, or use create_from_media",
                               param="file_ids")


class VectorStoreModifyRequest(_Request):
    name: StrictStr | None = None
    metadata: dict[str, Any] | None = Field(None, description="Replaces the store's metadata.")


class VectorRecordIn(_Request):
    id: StrictStr | None = Field(None, description="Generated (`vec_...`) when absent; an existing id is replaced.")
    values: list[Number] | None = Field(None, description="The vector, of the store's width.")
    content: StrictStr | None = Field(None, description="Text; embedded with the store's model when no values.")
    metadata: dict[str, Any] | None = Field(None, description="Scalar values (string, number, boolean).")

    def to_input(self) -> VectorInput:
        return VectorInput(id=self.id, values=self.values, content=self.content, metadata=self.metadata)


class UpsertVectorsRequest(_Request):
    records: list[VectorRecordIn]

    def to_inputs(self) -> list[VectorInput]:
        return [record.to_input() for record in self.records]


class QueryRequest(_Request):
    query: StrictStr | None = Field(None, description="Text to embed with the store's model.")
    vector: list[Number] | None = Field(None, description="A vector of the store's width.")
    top_k: WireInt = 10
    filter: dict[str, Any] | None = Field(None, description="Metadata filter ($eq, $in, $gt, $and, $or, ...).")


class RankingOptions(_Request):
    ranker: StrictStr | None = None
    score_threshold: Number | None = None


class SearchRequest(_Request):
    query: StrictStr | list[StrictStr]
    filters: dict[str, Any] | None = Field(None, description="OpenAI's comparison / compound filters.")
    max_num_results: WireInt = 10
    ranking_options: RankingOptions | None = None
    rewrite_query: StrictBool = Field(False, description="Accepted; queries are used as sent.")

    def to_call(self) -> SearchCall:
        queries = (self.query,) if isinstance(self.query, str) else tuple(self.query)
        threshold = self.ranking_options.score_threshold if self.ranking_options else None
        return SearchCall(queries=queries, filters=self.filters, max_num_results=self.max_num_results,
                          score_threshold=None if threshold is None else float(threshold))


class CreateFromMediaRequest(_Request):
    media_ids: list[WireInt]
    name: StrictStr | None = None
    metadata: dict[str, Any] | None = None
    embedding_model: StrictStr | None = None
    dimensions: WireInt | None = None
    chunk_method: StrictStr | None = Field(None, description="words, sentences, paragraphs or tokens.")
    chunk_size: WireInt | None = None
    chunk_overlap: WireInt | None = None
    use_stored_chunks: StrictBool | None = Field(
        None, description="Reuse the media's stored chunks (default: yes, unless chunking options are given).")

    def to_call(self) -> MediaStoreCall:
        return MediaStoreCall(
            media_ids=tuple(self.media_ids), name=self.name, metadata=self.metadata,
            embedding_model=self.embedding_model, dimensions=self.dimensions, chunk_method=self.chunk_method,
            chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap, use_stored_chunks=self.use_stored_chunks,
        )


def parse_filter_param(text: str | None) -> dict[str, Any] | None:
    """The `filter` query parameter of a listing: a JSON object."""
    if text is None or not text.strip():
        return None
    try:
        value = loads_json(text)
    except JSONDecodeError:
        raise InvalidInput("filter must be a JSON object", param="filter") from None
    if not isinstance(value, dict):
        raise InvalidInput("filter must be a JSON object", param="filter")
    return value


# --- responses -----------------------------------------------------------------------------------
class FileCounts(BaseModel):
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0


class VectorStoreObject(BaseModel):
    id: str
    object: Literal["vector_store"] = "vector_store"
    created_at: int
    name: str | None
    metadata: dict[str, str]
    status: str
    usage_bytes: int
    file_counts: FileCounts
    last_active_at: int
    expires_after: None = None
    expires_at: None = None
    embedding_model: str
    embedding_provider: str
    dimensions: int | None
    vector_count: int


class LastError(BaseModel):
    code: str
    message: str


class BatchObject(BaseModel):
    id: str
    object: Literal["vector_store.vectors_batch"] = "vector_store.vectors_batch"
    created_at: int
    vector_store_id: str
    status: str
    file_counts: FileCounts
    completed_at: int | None
    last_error: LastError | None


class VectorStoreFromMediaObject(VectorStoreObject):
    batch: BatchObject


class StoreList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VectorStoreObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool = True


class VectorObject(BaseModel):
    id: str
    object: Literal["vector_store.vector"] = "vector_store.vector"
    content: str
    metadata: dict[str, Any]
    values: list[float] | None = None


class VectorList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VectorObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
    next_offset: int | None


class UpsertResponse(BaseModel):
    object: Literal["vector_store.vectors.upsert"] = "vector_store.vectors.upsert"
    vector_store_id: str
    upserted: int
    ids: list[str]


class QueryHit(BaseModel):
    id: str
    score: float
    content: str
    metadata: dict[str, Any]


class QueryResponse(BaseModel):
    object: Literal["list"] = "list"
    vector_store_id: str
    data: list[QueryHit]


class TextContent(BaseModel):
    type: Literal["text"] = "text"
    text: str


class SearchResult(BaseModel):
    file_id: str
    filename: str
    score: float
    attributes: dict[str, Any]
    content: list[TextContent]


class SearchPage(BaseModel):
    object: Literal["vector_store.search_results.page"] = "vector_store.search_results.page"
    search_query: list[str]
    data: list[SearchResult]
    has_more: bool = False
    next_page: str | None = None


def _ts(value: Any) -> int:
    return int(value.timestamp())


def store_object(record: VectorStoreRecord, file_counts: Mapping[str, int] | None = None) -> VectorStoreObject:
    counts = FileCounts(**file_counts) if file_counts else FileCounts()
    status = "in_progress" if counts.in_progress else record.status
    return VectorStoreObject(
        id=record.id, created_at=_ts(record.created_at), name=record.name, metadata=record.metadata,
        status=status, usage_bytes=record.usage_bytes, file_counts=counts,
        last_active_at=_ts(record.updated_at), embedding_model=record.embedding_model,
        embedding_provider=record.embedding_provider, dimensions=record.dimensions, vector_count=record.vector_count,
    )


def batch_object(record: BatchRecord) -> BatchObject:
    remaining = max(0, record.total - record.completed - record.failed)
    counts = FileCounts(in_progress=record.in_progress, completed=record.completed, failed=record.failed,
                        cancelled=remaining if record.status == "cancelled" else 0, total=record.total)
    error = LastError(code="batch_failed", message=record.error) if record.error else None
    return BatchObject(
        id=record.id, created_at=_ts(record.created_at), vector_store_id=record.store_id, status=record.status,
        file_counts=counts, completed_at=_ts(record.completed_at) if record.completed_at else None, last_error=error,
    )


def from_media_object(store: VectorStoreRecord, batch: BatchRecord) -> VectorStoreFromMediaObject:
    return VectorStoreFromMediaObject(**store_object(store).model_dump(), batch=batch_object(batch))


def store_list(records: Sequence[VectorStoreRecord], has_more: bool,
               file_counts: Sequence[Mapping[str, int]] | None = None) -> StoreList:
    counts = list(file_counts) if file_counts is not None else [{} for _ in records]
    return StoreList(data=[store_object(r, c) for r, c in zip(records, counts, strict=True)],
                     first_id=records[0].id if records else None,
                     last_id=records[-1].id if records else None, has_more=has_more)


def batch_list(records: Sequence[BatchRecord], has_more: bool) -> BatchList:
    return BatchList(data=[batch_object(r) for r in records], first_id=records[0].id if records else None,
                     last_id=records[-1].id if records else None, has_more=has_more)


def vector_object(record: VectorRecord) -> VectorObject:
    return VectorObject(id=record.id, content=record.document, metadata=dict(record.metadata), values=record.vector)


def vector_list(records: Sequence[VectorRecord], has_more: bool, offset: int) -> VectorList:
    return VectorList(data=[vector_object(r) for r in records], first_id=records[0].id if records else None,
                      last_id=records[-1].id if records else None, has_more=has_more,
                      next_offset=offset + len(records) if has_more else None)


def query_response(store_id: str, hits: Sequence[VectorHit]) -> QueryResponse:
    return QueryResponse(vector_store_id=store_id, data=[
        QueryHit(id=h.id, score=h.score, content=h.document, metadata=dict(h.metadata)) for h in hits])


def search_page(queries: Sequence[str], hits: Sequence[VectorHit]) -> SearchPage:
    results = []
    for hit in hits:
        file_id, filename = hit_source(hit.id, hit.metadata)
        results.append(SearchResult(file_id=file_id, filename=filename, score=hit.score,
                                    attributes=dict(hit.metadata), content=[TextContent(text=hit.document)]))
    return SearchPage(search_query=list(queries), data=results)


# --- vector store files and file batches (OpenAI's shapes) -------------------------------------------
class AttachFileRequest(_Request):
    file_id: StrictStr = Field(..., max_length=64)
    attributes: dict[str, StrictStr | float | bool] | None = Field(None, description="Up to 16 key/values filtering "
                                                                   "searches.")
    chunking_strategy: dict[str, Any] | None = None


class FileBatchRequest(_Request):
    file_ids: list[StrictStr] = Field(..., min_length=1, max_length=500)
    attributes: dict[str, StrictStr | float | bool] | None = None
    chunking_strategy: dict[str, Any] | None = None


class VectorStoreFileObject(BaseModel):
    id: str
    object: Literal["vector_store.file"] = "vector_store.file"
    usage_bytes: int
    created_at: int
    vector_store_id: str
    status: str
    last_error: LastError | None
    chunking_strategy: dict[str, Any]
    attributes: dict[str, Any]


class VectorStoreFileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VectorStoreFileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileBatchObject(BaseModel):
    id: str
    object: Literal["vector_store.files_batch"] = "vector_store.files_batch"
    created_at: int
    vector_store_id: str
    status: str
    file_counts: FileCounts


def store_file_object(view: FileView) -> VectorStoreFileObject:
    link = view.file
    return VectorStoreFileObject(
        id=link.id, usage_bytes=link.usage_bytes, created_at=_ts(link.created_at), vector_store_id=link.store_id,
        status=view.status, last_error=LastError(**view.last_error) if view.last_error else None,
        chunking_strategy=link.chunking, attributes=link.attributes)


def store_file_list(views: Sequence[FileView], has_more: bool) -> VectorStoreFileList:
    data = [store_file_object(v) for v in views]
    return VectorStoreFileList(data=data, first_id=data[0].id if data else None,
                               last_id=data[-1].id if data else None, has_more=has_more)


def file_batch_object(batch: FileBatch, counts: Mapping[str, int]) -> FileBatchObject:
    file_counts = FileCounts(**counts)
    if batch.cancelled and not file_counts.in_progress:
        status = "cancelled"
    elif file_counts.in_progress:
        status = "cancelling" if batch.cancelled else "in_progress"
    else:
        status = "failed" if file_counts.failed and not file_counts.completed else "completed"
    return FileBatchObject(id=batch.id, created_at=_ts(batch.created_at), vector_store_id=batch.store_id,
                           status=status, file_counts=file_counts)
