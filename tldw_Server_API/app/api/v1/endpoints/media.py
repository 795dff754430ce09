"""Host media routes: `POST /media/add` (multipart file upload, or JSON `{title, content}`),
`PATCH /media/{id}` (edit its text), `GET /media/{id}`, `GET /media` (paged),
`DELETE /media/{id}` (soft; `?purge_vectors=true` also
removes its vectors at once). Thin: one `MediaService` call per handler.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from tldw_Server_API.app.api.v1.deps import CurrentUser, MediaServiceDep
from tldw_Server_API.app.api.v1.routing import v1_router
from tldw_Server_API.app.api.v1.schemas.common import MediaIdPath, Offset
from tldw_Server_API.app.api.v1.schemas.media import (
    EmbeddingOptionsModel,
    MediaAddJSON,
    MediaAddResponse,
    MediaDeleted,
    MediaItem,
    MediaList,
    MediaUpdateJSON,
)
from tldw_Server_API.app.core.errors import InvalidInput
from tldw_Server_API.app.core.Media.media_service import NewMedia
from tldw_Server_API.app.core.wire import JSONDecodeError, json_error_message, loads_json

router = v1_router("media")


def _validated(model: type[EmbeddingOptionsModel], data: object) -> EmbeddingOptionsModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if param is None:
            raise InvalidInput("the request body must be a JSON object") from None
        if first["type"] == "missing":
            raise InvalidInput(f"'{param}' is required", param=param, code="missing_required_parameter") from None
        raise InvalidInput(f"invalid value for '{param}': {first['msg']}", param=param) from None


def _json_body(raw: bytes) -> object:
    try:
        return loads_json(raw or b"null")
    except JSONDecodeError as exc:
        raise InvalidInput(json_error_message(exc.msg)) from None


def _form_value(value: object) -> object:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


@router.post("/media/add", response_model=MediaAddResponse, status_code=201)
async def add_media(request: Request, user: CurrentUser, service: MediaServiceDep) -> MediaAddResponse:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise InvalidInput("a multipart upload needs a 'file' part with a file name", param="file")
        fields = {k: _form_value(v) for k, v in form.items() if k not in ("file", "title", "generate_embeddings")}
        options = _validated(EmbeddingOptionsModel, fields)
        generate = _form_value(form.get("generate_embeddings", "true"))
        if not isinstance(generate, bool):
            raise InvalidInput("'generate_embeddings' must be true or false", param="generate_embeddings")
        title = form.get("title")
        record, started = await service.add_upload(
            user, upload.filename, upload.content_type, await upload.read(), title if isinstance(title, str) else None,
            generate, options.to_options(),
        )
    else:
        body = _validated(MediaAddJSON, _json_body(await request.body()))
        assert isinstance(body, MediaAddJSON)
        record, started = await service.add(
            user, NewMedia(body.title, body.content, body.media_type), body.generate_embeddings, body.to_options(),
        )
    return MediaAddResponse(
        media_id=record.id, title=record.title, content_hash=record.content_hash,
        job_id=started.job.job_id if started else None,
        embedding_status=started.job.status.value if started else None,
    )


@router.patch("/media/{media_id}", response_model=MediaAddResponse)
async def update_media(media_id: MediaIdPath, body: MediaUpdateJSON, user: CurrentUser,
                       service: MediaServiceDep) -> MediaAddResponse:
    """Edit a media item's text (and title): its FTS chunks follow at once, and its embedding job
    re-embeds only the chunks whose text changed (REEMBED_SKIP_UNCHANGED)."""
    record, started = await service.update(user, media_id, body.content, body.title, body.generate_embeddings,
                                           body.to_options())
    return MediaAddResponse(
        media_id=record.id, title=record.title, content_hash=record.content_hash,
        job_id=started.job.job_id if started else None,
        embedding_status=started.job.status.value if started else None,
    )


@router.get("/media/{media_id}", response_model=MediaItem)
async def get_media(media_id: MediaIdPath, user: CurrentUser, service: MediaServiceDep) -> MediaItem:
    return MediaItem.of(await service.get(user, media_id))


@router.get("/media", response_model=MediaList)
async def list_media(
    user: CurrentUser, service: MediaServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50, offset: Offset = 0,
    source_hash: Annotated[str | None, Query(max_length=64, description="Only media uploaded from a file with "
                                             "this sha256 (hex): has this file been ingested?")] = None,
) -> MediaList:
    items, total = await service.list(user, limit, offset, source_hash)
    return MediaList(items=[MediaItem.of(i) for i in items], total=total, limit=limit, offset=offset)


@router.delete("/media/{media_id}", response_model=MediaDeleted)
async def delete_media(
    media_id: MediaIdPath, user: CurrentUser, service: MediaServiceDep, purge_vectors: bool = False
) -> MediaDeleted:
    removed = await service.delete(user, media_id, purge_vectors)
    return MediaDeleted(media_id=media_id, vectors_removed=removed)
