"""Host media operations behind `api/v1/endpoints/media.py`: add (upload or JSON text), edit, read, list,
soft delete (optionally purging vectors at once). Adding validates every option first, then writes
the media with its FTS chunks, then queues the embedding job, so a refused request writes nothing.
Imports core modules only; synchronous DB calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from tldw_Server_API.app.core.AuthNZ.api_keys import User
from tldw_Server_API.app.core.Chunking import Chunk, ExtractionLimits, extract_text
from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDBFactory, MediaRecord, MediaSummary
from tldw_Server_API.app.core.Embeddings.media_embedding_service import (
    EmbeddingOptions,
    MediaEmbeddingService,
    StartResult,
)
from tldw_Server_API.app.core.errors import InvalidInput, PayloadTooLarge

MAX_TITLE = 512


@dataclass(frozen=True)
class NewMedia:
    title: str | None
    content: str
    media_type: str
    source_filename: str | None = None
    page_starts: tuple[int, ...] | None = None   # paged sources (PDF): where each page starts in `content`
    source_hash: str | None = None               # sha256 of the uploaded file's bytes


class MediaService:
    def __init__(self, media_dbs: MediaDBFactory, embeddings: MediaEmbeddingService, max_upload_bytes: int,
                 quota_bytes: int = 0, limits: ExtractionLimits | None = None) -> None:
        self._media_dbs = media_dbs
        self._embeddings = embeddings
        self._max_upload_bytes = max_upload_bytes
        self._quota_bytes = quota_bytes
        self._limits = limits or ExtractionLimits()

    async def add_upload(
        self, user: User, filename: str, content_type: str | None, raw: bytes, title: str | None,
        generate_embeddings: bool, options: EmbeddingOptions,
    ) -> tuple[MediaRecord, StartResult | None]:
        if len(raw) > self._max_upload_bytes:
            raise PayloadTooLarge(f"the upload is larger than {self._max_upload_bytes} bytes", param="file")
        found = await asyncio.to_thread(extract_text, filename, content_type, raw, self._limits)  # PDFs take seconds
        kind = filename.rsplit(".", 1)[-1].lower() if "." in filename else "text"
        media = NewMedia(title or found.title, found.text, kind, filename, found.page_starts,
                         hashlib.sha256(raw).hexdigest())
        return await self.add(user, media, generate_embeddings, options)

    async def add(
        self, user: User, media: NewMedia, generate_embeddings: bool, options: EmbeddingOptions
    ) -> tuple[MediaRecord, StartResult | None]:
        chunks = await self._checked_chunks(user, media.content, media.page_starts, options, generate_embeddings,
                                            param="file" if media.source_filename else "content", title=media.title)
        db = self._media_dbs.get(user.id)

        def write() -> MediaRecord:
            record = db.add_media(media.title or "", media.content, media.media_type, media.source_filename,
                                  quota_bytes=self._quota_bytes, page_starts=media.page_starts,
                                  source_hash=media.source_hash)
            db.replace_chunks(record.id, chunks)   # FTS search works with or without embeddings
            return record

        record = await asyncio.to_thread(write)
        if not generate_embeddings:
            return record, None
        return record, await self._embeddings.start(user, record.id, options)

    async def update(
        self, user: User, media_id: int, content: str, title: str | None, generate_embeddings: bool,
        options: EmbeddingOptions,
    ) -> tuple[MediaRecord, StartResult | None]:
        """Replace a media item's text (and title); its FTS chunks at once, then (by default) an
        embedding job, which reuses the vectors of unchanged chunks."""
        chunks = await self._checked_chunks(user, content, None, options, generate_embeddings, param="content")
        db = self._media_dbs.get(user.id)
        record = await asyncio.to_thread(db.update_content, media_id, content, chunks, title, self._quota_bytes)
        if not generate_embeddings:
            return record, None
        return record, await self._embeddings.start(user, record.id, options)

    async def _checked_chunks(self, user: User, content: str, page_starts: Sequence[int] | None,
                              options: EmbeddingOptions, generate_embeddings: bool, *, param: str,
                              title: str | None = None) -> list[Chunk]:
        """Every check a write of this text needs, before anything is written (text, size, model,
        chunking, job capacity), then its FTS chunks as the job will cut them."""
        if not content.strip():
            raise InvalidInput("'content' must not be empty", param="content")
        if len(content.encode("utf-8")) > self._max_upload_bytes:   # JSON text has the upload cap too
            raise PayloadTooLarge(f"the media text is larger than {self._max_upload_bytes} bytes", param=param)
        if title is not None and len(title) > MAX_TITLE:
            raise InvalidInput(f"'title' is longer than {MAX_TITLE} characters", param="title")
        provider, model_id, chunking = await self._embeddings.prepare(user, options)
        if generate_embeddings:
            await self._embeddings.manager.check_capacity()
        return await asyncio.to_thread(   # seconds for a 25 MB text, and a tokenizer may load
            self._embeddings.chunk, content, page_starts, provider, model_id, chunking)

    async def get(self, user: User, media_id: int) -> MediaRecord:
        return await asyncio.to_thread(self._media_dbs.get(user.id).get_media, media_id)

    async def list(self, user: User, limit: int, offset: int,
                   source_hash: str | None = None) -> tuple[list[MediaSummary], int]:
        if not 1 <= limit <= 1000 or offset < 0:
            raise InvalidInput("'limit' must be 1-1000 and 'offset' >= 0", param="limit")
        return await asyncio.to_thread(self._media_dbs.get(user.id).list_media, limit, offset, source_hash)

    async def delete(self, user: User, media_id: int, purge_vectors: bool) -> int:
        """Soft delete (gone from search at once); returns vectors purged (0 unless asked)."""
        await asyncio.to_thread(self._media_dbs.get(user.id).soft_delete, media_id)
        return await self._embeddings.purge_vectors(user.id, media_id) if purge_vectors else 0
