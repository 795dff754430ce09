"""OpenAI's vector store files and file batches under /api/v1 (and /v1): attach an uploaded file
to a store (`chunking_strategy` auto | static, `attributes`), list (with `filter` by status),
retrieve, delete (its vectors go), and file batches: create, retrieve, cancel, list their files.
A file goes through the media path (extract, chunk, embed, store on either executor). Thin: one
`VectorStoreFileService` call per handler; errors go through the shared table.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query

from tldw_Server_API.app.api.v1.deps import CurrentUser, VectorStoreFilesDep
from tldw_Server_API.app.api.v1.routing import v1_router
from tldw_Server_API.app.api.v1.schemas.vector_stores import (
    AttachFileRequest,
    Deleted,
    FileBatchObject,
    FileBatchRequest,
    VectorStoreFileList,
    VectorStoreFileObject,
    file_batch_object,
    store_file_list,
    store_file_object,
)

router = v1_router("vector-store-files")
STORE = "/vector_stores/{vector_store_id}"
Limit = Annotated[int, Query(ge=1, le=100)]
Status = Literal["in_progress", "completed", "failed", "cancelled"]
Cursor = Annotated[str | None, Query(max_length=64)]


@router.post(STORE + "/files", response_model=VectorStoreFileObject)
async def attach_file(vector_store_id: str, body: AttachFileRequest, user: CurrentUser,
                      files: VectorStoreFilesDep) -> VectorStoreFileObject:
    view = await files.attach(user, vector_store_id, body.file_id, attributes=body.attributes,
                              chunking_strategy=body.chunking_strategy)
    return store_file_object(view)


@router.get(STORE + "/files", response_model=VectorStoreFileList)
async def list_files(vector_store_id: str, user: CurrentUser, files: VectorStoreFilesDep, limit: Limit = 20,
                     order: Literal["asc", "desc"] = "desc", after: Cursor = None, before: Cursor = None,
                     filter: Status | None = None) -> VectorStoreFileList:  # noqa: A002 - OpenAI's parameter name
    views, has_more = await files.page(user, vector_store_id, limit=limit, order=order, after=after, before=before,
                                       status=filter)
    return store_file_list(views, has_more)


@router.get(STORE + "/files/{file_id}", response_model=VectorStoreFileObject)
async def retrieve_file(vector_store_id: str, file_id: str, user: CurrentUser,
                        files: VectorStoreFilesDep) -> VectorStoreFileObject:
    return store_file_object(await files.get(user, vector_store_id, file_id))


@router.delete(STORE + "/files/{file_id}", response_model=Deleted)
async def delete_file(vector_store_id: str, file_id: str, user: CurrentUser, files: VectorStoreFilesDep) -> Deleted:
    """Detach the file: its chunks leave the store's searches and its vectors are deleted."""
    await files.detach(user, vector_store_id, file_id)
    return Deleted(id=file_id, object="vector_store.file.deleted")


@router.post(STORE + "/file_batches", response_model=FileBatchObject)
async def create_file_batch(vector_store_id: str, body: FileBatchRequest, user: CurrentUser,
                            files: VectorStoreFilesDep) -> FileBatchObject:
    batch = await files.create_batch(user, vector_store_id, list(body.file_ids), attributes=body.attributes,
                                     chunking_strategy=body.chunking_strategy)
    return file_batch_object(*await files.batch(user, vector_store_id, batch.id))


@router.get(STORE + "/file_batches/{batch_id}", response_model=FileBatchObject)
async def retrieve_file_batch(vector_store_id: str, batch_id: str, user: CurrentUser,
                              files: VectorStoreFilesDep) -> FileBatchObject:
    return file_batch_object(*await files.batch(user, vector_store_id, batch_id))


@router.post(STORE + "/file_batches/{batch_id}/cancel", response_model=FileBatchObject)
async def cancel_file_batch(vector_store_id: str, batch_id: str, user: CurrentUser,
                            files: VectorStoreFilesDep) -> FileBatchObject:
    return file_batch_object(*await files.cancel_batch(user, vector_store_id, batch_id))


@router.get(STORE + "/file_batches/{batch_id}/files", response_model=VectorStoreFileList)
async def list_batch_files(vector_store_id: str, batch_id: str, user: CurrentUser, files: VectorStoreFilesDep,
                           limit: Limit = 20, order: Literal["asc", "desc"] = "desc", after: Cursor = None,
                           before: Cursor = None, filter: Status | None = None,  # noqa: A002
                           ) -> VectorStoreFileList:
    await files.batch(user, vector_store_id, batch_id)   # 404 for another store's or user's batch
    views, has_more = await files.page(user, vector_store_id, limit=limit, order=order, after=after, before=before,
                                       status=filter, batch_id=batch_id)
    return store_file_list(views, has_more)
