"""OpenAI-compatible vector stores under /api/v1: stores (create, list, retrieve, modify, delete),
vectors (upsert, list, retrieve, delete), query and OpenAI's search, background vector batches and
create-from-media. Thin: each handler parses its request, calls one `VectorStoreService` method
and renders OpenAI's shapes; errors are translated by the shared table in `api/v1/errors.py`.
"""

from __future__ import annotations

from typing import Literal

from tldw_Server_API.app.api.v1.deps import CurrentUser, VectorStoreFilesDep, VectorStoreServiceDep
from tldw_Server_API.app.api.v1.routing import v1_router
from tldw_Server_API.app.api.v1.schemas.common import Offset
from tldw_Server_API.app.api.v1.schemas.vector_stores import (
    BatchList,
    BatchObject,
    CreateFromMediaRequest,
    Deleted,
    PageLimit,
    QueryRequest,
    QueryResponse,
    SearchPage,
    SearchRequest,
    StoreList,
    UpsertResponse,
    UpsertVectorsRequest,
    VectorList,
    VectorObject,
    VectorPageLimit,
    VectorStoreCreateRequest,
    VectorStoreFromMediaObject,
    VectorStoreModifyRequest,
    VectorStoreObject,
    batch_list,
    batch_object,
    from_media_object,
    parse_filter_param,
    query_response,
    search_page,
    store_list,
    store_object,
    vector_list,
    vector_object,
)

router = v1_router("vector-stores")
Order = Literal["asc", "desc"]
STORE = "/vector_stores/{vector_store_id}"


# --- stores (create_from_media before /{id}: its path would match the modify route) -----------------
@router.post("/vector_stores", response_model=VectorStoreObject)
async def create_vector_store(
    body: VectorStoreCreateRequest, user: CurrentUser, service: VectorStoreServiceDep
) -> VectorStoreObject:
    body.check_supported()
    record = await service.create_store(user, name=body.name, metadata=body.metadata,
                                        embedding_model=body.embedding_model, dimensions=body.dimensions)
    return store_object(record)


@router.get("/vector_stores", response_model=StoreList)
async def list_vector_stores(
    user: CurrentUser, service: VectorStoreServiceDep, files: VectorStoreFilesDep, limit: PageLimit = 20,
    order: Order = "desc", after: str | None = None, before: str | None = None,
) -> StoreList:
    records, has_more = await service.list_stores(user, limit=limit, order=order, after=after, before=before)
    return store_list(records, has_more, await files.stores_file_counts(user, [r.id for r in records]))


@router.post("/vector_stores/create_from_media", response_model=VectorStoreFromMediaObject)
async def create_vector_store_from_media(
    body: CreateFromMediaRequest, user: CurrentUser, service: VectorStoreServiceDep
) -> VectorStoreFromMediaObject:
    store, batch = await service.create_from_media(user, body.to_call())
    return from_media_object(store, batch)


@router.get(STORE, response_model=VectorStoreObject)
async def retrieve_vector_store(
    vector_store_id: str, user: CurrentUser, service: VectorStoreServiceDep, files: VectorStoreFilesDep,
) -> VectorStoreObject:
    record = await service.get_store(user, vector_store_id)
    return store_object(record, await files.file_counts(user, record.id))


@router.post(STORE, response_model=VectorStoreObject)
@router.patch(STORE, response_model=VectorStoreObject)
async def modify_vector_store(
    vector_store_id: str, body: VectorStoreModifyRequest, user: CurrentUser, service: VectorStoreServiceDep
) -> VectorStoreObject:
    record = await service.modify_store(user, vector_store_id, name=body.name, metadata=body.metadata)
    return store_object(record)


@router.delete(STORE, response_model=Deleted)
async def delete_vector_store(vector_store_id: str, user: CurrentUser, files: VectorStoreFilesDep) -> Deleted:
    """Delete the store, its records, and its files' media items and vectors."""
    await files.delete_store(user, vector_store_id)
    return Deleted(id=vector_store_id, object="vector_store.deleted")


# --- batches (before /vectors/{vector_id}, which would match "batches") ------------------------------
@router.post(STORE + "/vectors/batches", response_model=BatchObject)
async def create_vector_batch(
    vector_store_id: str, body: UpsertVectorsRequest, user: CurrentUser, service: VectorStoreServiceDep
) -> BatchObject:
    return batch_object(await service.start_batch(user, vector_store_id, body.to_inputs()))


@router.get(STORE + "/vectors/batches", response_model=BatchList)
async def list_vector_batches(
    vector_store_id: str, user: CurrentUser, service: VectorStoreServiceDep, limit: PageLimit = 20,
    order: Order = "desc", after: str | None = None, before: str | None = None, status: str | None = None,
) -> BatchList:
    records, has_more = await service.list_batches(user, vector_store_id, limit=limit, order=order, after=after,
                                                   before=before, status=status)
    return batch_list(records, has_more)


@router.get(STORE + "/vectors/batches/{batch_id}", response_model=BatchObject)
async def retrieve_vector_batch(
    vector_store_id: str, batch_id: str, user: CurrentUser, service: VectorStoreServiceDep
) -> BatchObject:
    return batch_object(await service.get_batch(user, vector_store_id, batch_id))


@router.post(STORE + "/vectors/batches/{batch_id}/cancel", response_model=BatchObject)
async def cancel_vector_batch(
    vector_store_id: str, batch_id: str, user: CurrentUser, service: VectorStoreServiceDep
) -> BatchObject:
    return batch_object(await service.cancel_batch(user, vector_store_id, batch_id))


# --- vectors -------------------------------------------------------------------------------------------
@router.post(STORE + "/vectors", response_model=UpsertResponse)
async def upsert_vectors(
    vector_store_id: str, body: UpsertVectorsRequest, user: CurrentUser, service: VectorStoreServiceDep
) -> UpsertResponse:
    ids = await service.upsert_vectors(user, vector_store_id, body.to_inputs())
    return UpsertResponse(vector_store_id=vector_store_id, upserted=len(ids), ids=ids)


@router.get(STORE + "/vectors", response_model=VectorList)
async def list_vectors(
    vector_store_id: str, user: CurrentUser, service: VectorStoreServiceDep, limit: VectorPageLimit = 20,
    offset: Offset = 0, filter: str | None = None, include_values: bool = False,  # noqa: A002 - the wire name
) -> VectorList:
    records, has_more = await service.list_vectors(user, vector_store_id, limit=limit, offset=offset,
                                                   where=parse_filter_param(filter), include_values=include_values)
    return vector_list(records, has_more, offset)


@router.get(STORE + "/vectors/{vector_id}", response_model=VectorObject)
async def retrieve_vector(
    vector_store_id: str, vector_id: str, user: CurrentUser, service: VectorStoreServiceDep,
    include_values: bool = False,
) -> VectorObject:
    return vector_object(await service.get_vector(user, vector_store_id, vector_id, include_values))


@router.delete(STORE + "/vectors/{vector_id}", response_model=Deleted)
async def delete_vector(
    vector_store_id: str, vector_id: str, user: CurrentUser, service: VectorStoreServiceDep
) -> Deleted:
    await service.delete_vector(user, vector_store_id, vector_id)
    return Deleted(id=vector_id, object="vector_store.vector.deleted")


# --- retrieval -----------------------------------------------------------------------------------------
@router.post(STORE + "/query", response_model=QueryResponse)
async def query_vector_store(
    vector_store_id: str, body: QueryRequest, user: CurrentUser, service: VectorStoreServiceDep
) -> QueryResponse:
    hits = await service.query(user, vector_store_id, text=body.query, vector=body.vector, top_k=body.top_k,
                               where=body.filter)
    return query_response(vector_store_id, hits)


@router.post(STORE + "/search", response_model=SearchPage)
async def search_vector_store(
    vector_store_id: str, body: SearchRequest, user: CurrentUser, files: VectorStoreFilesDep
) -> SearchPage:
    """The store's records and its files' chunks (each result names its file), merged by score."""
    call = body.to_call()
    return search_page(call.queries, await files.search(user, vector_store_id, call))
