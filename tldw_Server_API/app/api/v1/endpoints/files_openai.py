"""OpenAI's Files API under /api/v1 (and /v1): `POST /files` (multipart `file` + `purpose`, with
OpenAI's optional `expires_after[anchor]=created_at` and `expires_after[seconds]`), list (keyset
pages), retrieve, retrieve content, delete. Per user: another user's file is a 404. Thin: one
`FileService` call per handler; errors go through the shared table.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Query, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from tldw_Server_API.app.api.v1.deps import CurrentUser, FileServiceDep
from tldw_Server_API.app.api.v1.routing import v1_router
from tldw_Server_API.app.api.v1.schemas.embeddings_operations import ListPage
from tldw_Server_API.app.core.errors import InvalidInput

router = v1_router("files")


def _form_int(value: object, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise InvalidInput(f"'{param}' must be a whole number of seconds", param=param)


@router.post("/files")
async def upload_file(request: Request, user: CurrentUser, files: FileServiceDep) -> dict[str, Any]:
    """Upload a file (multipart `file`, `purpose`): the OpenAI file object."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput("upload a file as multipart/form-data with a 'file' and a 'purpose' part", param="file")
    form = await request.form()
    upload, purpose = form.get("file"), form.get("purpose")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise InvalidInput("a 'file' part with a file name is required", param="file")
    if not isinstance(purpose, str) or not purpose:
        raise InvalidInput("'purpose' is required", param="purpose", code="missing_required_parameter")
    anchor = form.get("expires_after[anchor]")
    if anchor is not None and anchor != "created_at":
        raise InvalidInput("expires_after[anchor] must be 'created_at'", param="expires_after")
    seconds = _form_int(form.get("expires_after[seconds]"), "expires_after")
    record = await files.upload(user, upload.filename, purpose, await upload.read(), seconds)
    return record.to_dict()


@router.get("/files", response_model=ListPage)
async def list_files(
    user: CurrentUser, files: FileServiceDep, purpose: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000, order: Literal["asc", "desc"] = "desc",
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> ListPage:
    records, has_more = await files.page(user, limit=limit, after=after, order=order, purpose=purpose)
    return ListPage.of([r.to_dict() for r in records], has_more)


@router.get("/files/{file_id}")
async def retrieve_file(file_id: str, user: CurrentUser, files: FileServiceDep) -> dict[str, Any]:
    return (await files.get(user, file_id)).to_dict()


@router.get("/files/{file_id}/content")
async def file_content(file_id: str, user: CurrentUser, files: FileServiceDep) -> Response:
    """The file's bytes as uploaded (checked against their sha256)."""
    record, data = await files.content(user, file_id)
    disposition = f"attachment; filename*=UTF-8''{quote(record.filename)}"
    return Response(data, media_type="application/octet-stream", headers={"content-disposition": disposition})


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, user: CurrentUser, files: FileServiceDep) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "deleted": await files.delete(user, file_id)}
