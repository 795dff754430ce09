"""Vector store files and file batches (OpenAI's `vector_stores.files` / `file_batches`), the way
documents usually enter an OpenAI vector store (`upload_and_poll`).

An attached file takes exactly the media path: its bytes are extracted (txt/md/html/pdf/docx/
epub/odt), stored as a media item of the user (`media_type` from the extension, `source_filename`
the file's name), chunked to the store's model and embedded and stored by a media embedding job
on whichever executor runs (embedded or Redis), with its resume, retries, dead letters, re-embed
and compaction. OpenAI's `chunking_strategy` maps onto the job's chunking: `auto` is the default
`tokens` chunking sized to the model's window; `static` is `tokens` chunks of
`max_chunk_size_tokens` with `chunk_overlap_tokens`, clamped to the window (an overlap that does
not fit the clamped size is a 400). A file's status is its job's: `in_progress` until it ends
`completed`, `failed` (with `last_error`) or `cancelled`; a file that cannot be read is `failed`
at once. Deleting a file (or its store) soft-deletes its media item and purges its vectors.

Search over a store merges the store's own records with the chunks of its files (the media
collection of the store's model, filtered to its files' media ids and, with filters, to the files
whose attributes match), each result naming its file and chunk.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tldw_Server_API.app.core.AuthNZ.api_keys import User
from tldw_Server_API.app.core.Embeddings.embedding_service import EmbeddingService
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobRecord, JobStatus
from tldw_Server_API.app.core.Embeddings.media_embedding_service import EmbeddingOptions, MediaEmbeddingService
from tldw_Server_API.app.core.Embeddings.stage_context import media_collection
from tldw_Server_API.app.core.Embeddings.vector_store_files_db import FileBatch, StoreFile, VectorStoreFilesDB
from tldw_Server_API.app.core.Embeddings.vector_store_meta_db import VectorStoreRecord
from tldw_Server_API.app.core.Embeddings.vector_store_records import merge_hits, openai_filter_to_where
from tldw_Server_API.app.core.Embeddings.vector_store_service import SearchCall, VectorStoreService
from tldw_Server_API.app.core.errors import InvalidInput, NotFound, PayloadTooLarge, UnsupportedMediaType
from tldw_Server_API.app.core.Files.files_db import FileContentUnavailable, FilesDB
from tldw_Server_API.app.core.Media.media_service import MediaService
from tldw_Server_API.app.core.RAG.vector_stores.base import VectorHit
from tldw_Server_API.app.core.RAG.vector_stores.factory import VectorStoreFactory
from tldw_Server_API.app.core.RAG.vector_stores.filters import matches, parse_where

MAX_BATCH_FILES = 500
IN_LIST = 1000      # media ids per `$in` filter (the filter language's bound); more files: several queries
# What makes one file fail (OpenAI: the file's `last_error`) rather than the request: its bytes
# cannot be extracted or chunked, or are too large. Quotas, overload and auth errors stay errors.
UNREADABLE = (InvalidInput, UnsupportedMediaType, PayloadTooLarge, FileContentUnavailable)
STATUSES = ("in_progress", "completed", "failed", "cancelled")


@dataclass(frozen=True)
class FileView:
    """A store file with its status read from its job."""

    file: StoreFile
    status: str
    last_error: dict[str, str] | None


def file_status(job: JobRecord | None, error: str | None) -> tuple[str, dict[str, str] | None]:
    """OpenAI's status of a store file from its job (None: refused before any job)."""
    if job is None:
        return "failed", {"code": "invalid_file", "message": error or "the file could not be read"}
    if job.status == JobStatus.COMPLETED:
        return "completed", None
    if job.status == JobStatus.FAILED:
        return "failed", {"code": "server_error", "message": job.error or "embedding failed"}
    if job.status == JobStatus.CANCELLED:
        return "cancelled", None
    return "in_progress", None


def static_chunking(strategy: Mapping[str, Any] | None, budget: int) -> tuple[int | None, int | None]:
    """(chunk size, overlap) in tokens of OpenAI's `chunking_strategy`, the size clamped to the
    model's window (`budget` tokens); (None, None) for `auto`: the default chunking."""
    strategy = strategy or {"type": "auto"}
    kind = strategy.get("type")
    if kind == "auto":
        return None, None
    static = strategy.get("static")
    if kind != "static" or not isinstance(static, Mapping):
        raise InvalidInput("chunking_strategy must be {type: auto} or {type: static, static: {max_chunk_size_tokens, "
                           "chunk_overlap_tokens}}", param="chunking_strategy")
    size, overlap = static.get("max_chunk_size_tokens"), static.get("chunk_overlap_tokens", 0)
    if not isinstance(size, int) or isinstance(size, bool) or not 100 <= size <= 4096:
        raise InvalidInput("max_chunk_size_tokens must be an integer between 100 and 4096",
                           param="chunking_strategy.static.max_chunk_size_tokens")
    clamped = min(size, budget)
    if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap <= clamped // 2:
        raise InvalidInput(f"chunk_overlap_tokens must be between 0 and half the chunk size: {clamped // 2} here, "
                           f"chunks being clamped to the model's window of {budget} tokens",
                           param="chunking_strategy.static.chunk_overlap_tokens")
    return clamped, overlap


class VectorStoreFileService:
    def __init__(self, stores: VectorStoreService, files: FilesDB, links: VectorStoreFilesDB, media: MediaService,
                 media_embeddings: MediaEmbeddingService, embeddings: EmbeddingService,
                 vector_stores: VectorStoreFactory) -> None:
        self._stores = stores
        self._media_embeddings = media_embeddings
        jobs = media_embeddings.manager.jobs
        self._files = files
        self._links = links
        self._media = media
        self._jobs = jobs
        self._embeddings = embeddings
        self._vector_stores = vector_stores

    # --- files -----------------------------------------------------------------------------------
    async def attach(self, user: User, store_id: str, file_id: str, *, attributes: Mapping[str, Any] | None = None,
                     chunking_strategy: Mapping[str, Any] | None = None, batch_id: str | None = None) -> FileView:
        store = await self._stores.get_store(user, store_id)
        record = await asyncio.to_thread(self._files.get, user.id, file_id)   # another user's: 404
        try:   # attached again: the earlier attachment's media item and vectors go first
            await self._drop(user, await asyncio.to_thread(self._links.remove, user.id, store.id, file_id))
        except NotFound:
            pass
        model = f"{store.embedding_provider}:{store.embedding_model}"
        window = await asyncio.to_thread(self._embeddings.window, model)
        size, overlap = static_chunking(chunking_strategy, window.budget)
        options = EmbeddingOptions(embedding_model=model, chunk_method="tokens", chunk_size=size, chunk_overlap=overlap)
        _, _, chunk = await self._media_embeddings.prepare(user, options)    # the chunking the job will use
        reported = {"type": "static", "static": {"max_chunk_size_tokens": chunk.size,
                                                 "chunk_overlap_tokens": chunk.overlap}}
        attrs = dict(attributes or {})
        common: dict[str, Any] = {"batch_id": batch_id, "attributes": attrs, "chunking": reported,
                                  "usage_bytes": record.bytes}
        try:
            data = await asyncio.to_thread(self._files.content, user.id, file_id)
            media, started = await self._media.add_upload(user, record.filename, None, data, None, True, options)
        except UNREADABLE as exc:   # this file cannot become text: it is failed; anything else is the caller's
            link = await asyncio.to_thread(self._links.add, user.id, store.id, file_id, record.filename, media_id=None,
                                           job_id=None, error=exc.message, **common)
            return self._view(link, None)
        job = started.job if started else None
        link = await asyncio.to_thread(self._links.add, user.id, store.id, file_id, record.filename,
                                       media_id=media.id, job_id=job.job_id if job else None, **common)
        return self._view(link, job)

    async def get(self, user: User, store_id: str, file_id: str) -> FileView:
        await self._stores.get_store(user, store_id)
        link = await asyncio.to_thread(self._links.get, user.id, store_id, file_id)
        return await self._with_status(link)

    async def page(self, user: User, store_id: str, *, limit: int, order: str, after: str | None,
                   before: str | None, status: str | None = None, batch_id: str | None = None,
                   ) -> tuple[list[FileView], bool]:
        await self._stores.get_store(user, store_id)
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"filter must be one of {', '.join(STATUSES)}", param="filter")
        if status is None:
            links, more = await asyncio.to_thread(self._links.page, user.id, store_id, limit=limit,
                                                  order=order, after=after, before=before,  # type: ignore[arg-type]
                                                  batch_id=batch_id)
            return await self._views(user.id, links), more
        views = [v for v in await self._all(user, store_id, batch_id) if v.status == status]
        views.sort(key=lambda v: (v.file.created_at, v.file.id), reverse=order == "desc")
        if after is not None:
            ids = [v.file.id for v in views]
            views = views[ids.index(after) + 1:] if after in ids else []
        return views[:limit], len(views) > limit

    async def detach(self, user: User, store_id: str, file_id: str) -> None:
        """Remove a file from a store: its media item is soft-deleted and its vectors purged."""
        await self._stores.get_store(user, store_id)
        link = await asyncio.to_thread(self._links.remove, user.id, store_id, file_id)
        await self._drop(user, link)

    async def delete_store(self, user: User, store_id: str) -> None:
        """Delete a store; every file's media item and vectors go with it."""
        await self._stores.delete_store(user, store_id)
        for link in await asyncio.to_thread(self._links.remove_store, user.id, store_id):
            await self._drop(user, link)

    async def file_counts(self, user: User, store_id: str, batch_id: str | None = None) -> dict[str, int]:
        return self._counts(await self._all(user, store_id, batch_id))

    async def stores_file_counts(self, user: User, store_ids: Sequence[str]) -> list[dict[str, int]]:
        """`file_counts` of each store (a page of `GET /vector_stores`): their files in one query,
        their job states in another."""
        links = await asyncio.to_thread(self._links.all_in_stores, user.id, store_ids) if store_ids else []
        views = await self._views(user.id, links)
        by_store: dict[str, list[FileView]] = {}
        for view in views:
            by_store.setdefault(view.file.store_id, []).append(view)
        return [self._counts(by_store.get(store_id, [])) for store_id in store_ids]

    @staticmethod
    def _counts(views: Sequence[FileView]) -> dict[str, int]:
        counts = Counter(v.status for v in views)
        return {**{s: counts.get(s, 0) for s in STATUSES}, "total": len(views)}

    # --- batches ---------------------------------------------------------------------------------
    async def create_batch(self, user: User, store_id: str, file_ids: Sequence[str], *,
                           attributes: Mapping[str, Any] | None = None,
                           chunking_strategy: Mapping[str, Any] | None = None) -> FileBatch:
        if not file_ids or len(file_ids) > MAX_BATCH_FILES:
            raise InvalidInput(f"file_ids must hold 1-{MAX_BATCH_FILES} file ids", param="file_ids")
        await self._stores.get_store(user, store_id)
        for file_id in dict.fromkeys(file_ids):   # every file exists and is the caller's before any is attached
            await asyncio.to_thread(self._files.get, user.id, file_id)
        static_chunking(chunking_strategy, 4096)   # a malformed strategy refuses the batch, not each file
        batch = await asyncio.to_thread(self._links.create_batch, user.id, store_id)
        for file_id in dict.fromkeys(file_ids):
            await self.attach(user, store_id, file_id, attributes=attributes, chunking_strategy=chunking_strategy,
                              batch_id=batch.id)
        return batch

    async def batch(self, user: User, store_id: str, batch_id: str) -> tuple[FileBatch, dict[str, int]]:
        batch = await asyncio.to_thread(self._links.get_batch, user.id, store_id, batch_id)
        return batch, await self.file_counts(user, store_id, batch_id)

    async def cancel_batch(self, user: User, store_id: str, batch_id: str) -> tuple[FileBatch, dict[str, int]]:
        await asyncio.to_thread(self._links.cancel_batch, user.id, store_id, batch_id)
        for view in await self._all(user, store_id, batch_id):
            if view.status == "in_progress" and view.file.job_id:
                await asyncio.to_thread(self._jobs.cancel, user.id, view.file.job_id)
        return await self.batch(user, store_id, batch_id)

    # --- search ------------------------------------------------------------------------------------
    async def search(self, user: User, store_id: str, call: SearchCall) -> list[VectorHit]:
        """The store's records and its files' chunks, merged by score."""
        own = await self._stores.search(user, store_id, call)
        store = await self._stores.get_store(user, store_id)
        links = [link for link in await asyncio.to_thread(self._links.all, user.id, store_id)
                 if link.media_id is not None]
        if call.filters is not None:
            condition = parse_where(openai_filter_to_where(call.filters))
            links = [link for link in links if matches(condition, link.attributes)]
        if not links:
            return own
        return merge_hits([own, await self._file_hits(user, store, links, call)], call.max_num_results,
                          call.score_threshold)

    async def _file_hits(self, user: User, store: VectorStoreRecord, links: list[StoreFile],
                         call: SearchCall) -> list[VectorHit]:
        embedded = await self._embeddings.embed_texts(f"{store.embedding_provider}:{store.embedding_model}",
                                                      list(call.queries), None)
        name = media_collection(user.id, embedded.model_id, self._embeddings.registry.default_model_id)
        by_media = {link.media_id: link for link in links}
        vectors = self._vector_stores.for_user(user.id)
        ids = sorted(m for m in by_media if m is not None)
        wheres = [{"media_id": {"$in": ids[i:i + IN_LIST]}} for i in range(0, len(ids), IN_LIST)]

        def query() -> list[list[VectorHit]]:
            if name not in vectors.list_collections():
                return []
            return [vectors.query(name, row, call.max_num_results, where)
                    for row in embedded.vectors for where in wheres]

        hits = []
        for hit_list in await asyncio.to_thread(query):
            for hit in hit_list:
                link = by_media.get(int(hit.metadata.get("media_id", -1)))
                if link is None:
                    continue
                metadata = {**link.attributes, "file_id": link.id, "filename": link.filename,
                            "chunk_index": hit.metadata.get("chunk_index")}
                hits.append(VectorHit(f"{link.id}#{hit.metadata.get('chunk_index')}", hit.score, hit.document,
                                      metadata))
        return hits

    # --- helpers -----------------------------------------------------------------------------------
    def _view(self, link: StoreFile, job: JobRecord | None) -> FileView:
        status, error = file_status(job, link.error)
        return FileView(link, status, error)

    async def _with_status(self, link: StoreFile) -> FileView:
        return (await self._views(link.user_id, [link]))[0]

    async def _views(self, user_id: str, links: Sequence[StoreFile]) -> list[FileView]:
        """The links with their statuses, their jobs read in one query (not one per file)."""
        job_ids = [link.job_id for link in links if link.job_id]
        jobs = await asyncio.to_thread(self._jobs.get_jobs, user_id, job_ids) if job_ids else {}
        return [self._view(link, jobs.get(link.job_id) if link.job_id else None) for link in links]

    async def _all(self, user: User, store_id: str, batch_id: str | None) -> list[FileView]:
        return await self._views(user.id, await asyncio.to_thread(self._links.all, user.id, store_id, batch_id))

    async def _drop(self, user: User, link: StoreFile) -> None:
        if link.job_id:
            await asyncio.to_thread(self._jobs.cancel, user.id, link.job_id)
        if link.media_id is not None:
            try:
                await self._media.delete(user, link.media_id, purge_vectors=True)
            except NotFound:
                pass
