"""`VectorStoreService`: the OpenAI-compatible vector stores behind `vector_stores_openai.py`.

Store records live in `VectorStoreMetaDB`, vectors in the user's `VectorStore` under a collection
named after the store id (`vs_<hex>`), batches in `VectorStoreBatchesDB`; content is embedded with
the store's model. Every blocking call runs in a worker thread; batches run as asyncio tasks this
service tracks and cancels in `aclose()`. Raises domain errors only; imports no web framework.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from loguru import logger

from tldw_Server_API.app.core.AuthNZ.api_keys import User
from tldw_Server_API.app.core.Chunking import ChunkingOptions, chunk_text, validate_options
from tldw_Server_API.app.core.config import ChunkingDefaults
from tldw_Server_API.app.core.DB_Management.Media_DB import MediaRecord
from tldw_Server_API.app.core.Embeddings._sql_engine import Order
from tldw_Server_API.app.core.Embeddings.embedding_service import EmbeddingService
from tldw_Server_API.app.core.Embeddings.vector_store_batches_db import BatchRecord
from tldw_Server_API.app.core.Embeddings.vector_store_meta_db import VectorStoreRecord
from tldw_Server_API.app.core.Embeddings.vector_store_records import (
    MAX_BATCH_RECORDS,
    MAX_LIST_VECTORS,
    MAX_MEDIA_PER_STORE,
    MAX_SEARCH_QUERIES,
    MAX_SEARCH_RESULTS,
    MAX_UPSERT_RECORDS,
    PreparedRecord,
    VectorInput,
    check_page,
    check_record_count,
    check_unique_ids,
    checked_where,
    media_chunk_records,
    merge_hits,
    openai_filter_to_where,
    prepare_records,
    query_vector,
    store_dimensions,
    triage_records,
    usage_bytes,
)
from tldw_Server_API.app.core.errors import Conflict, InvalidInput, NotFound, ProviderError, ServiceUnavailable
from tldw_Server_API.app.core.RAG.vector_stores.base import VectorHit, VectorRecord, VectorStore, validate_top_k

if TYPE_CHECKING:
    from tldw_Server_API.app.core.services import StorageServices

T = TypeVar("T")
EMBED_BATCH = 64        # texts per embedding call, and records per batch step (progress granularity)
MAX_CHUNKS_PER_MEDIA = 20_000


@dataclass(frozen=True)
class SearchCall:
    """OpenAI's search request: one or more queries, filters in OpenAI's shape, result bounds."""

    queries: tuple[str, ...]
    filters: Mapping[str, Any] | None = None
    max_num_results: int = 10
    score_threshold: float | None = None


@dataclass(frozen=True)
class MediaStoreCall:
    """A new store filled from the caller's media: stored chunks, or fresh chunks of the content."""

    media_ids: tuple[int, ...]
    name: str | None = None
    metadata: Mapping[str, Any] | None = None
    embedding_model: str | None = None
    dimensions: int | None = None
    chunk_method: str | None = None
    chunk_size: int | None = None
    chunk_overlap: int | None = None
    use_stored_chunks: bool | None = None   # None: the stored chunks unless chunking options are given

    @property
    def reuse_chunks(self) -> bool:
        if self.use_stored_chunks is not None:
            return self.use_stored_chunks
        return self.chunk_method is None and self.chunk_size is None and self.chunk_overlap is None


@dataclass
class _Tally:
    completed: int = 0
    failed: int = 0
    error: str | None = None

    def fail(self, count: int, error: BaseException) -> None:
        self.failed += count
        if self.error is None:
            self.error = str(getattr(error, "message", None) or type(error).__name__)


@dataclass
class _Running:
    user_id: str
    store_id: str
    task: asyncio.Task[None]
    done: asyncio.Event = field(default_factory=asyncio.Event)  # set once the task has ended


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking store/database call off the event loop."""
    return await asyncio.to_thread(partial(fn, *args, **kwargs))


class VectorStoreService:
    def __init__(self, embeddings: EmbeddingService, storage: StorageServices,
                 chunking: ChunkingDefaults | None = None) -> None:
        self._embeddings = embeddings
        self._storage = storage
        self._meta = storage.vector_store_meta
        self._batches = storage.vector_store_batches
        self._chunking = chunking
        self._running: dict[str, _Running] = {}
        self._closed = False

    def _vectors(self, user: User) -> VectorStore:
        return self._storage.vector_stores.for_user(user.id)

    # --- stores ----------------------------------------------------------------------------------
    async def create_store(self, user: User, *, name: str | None = None, metadata: Mapping[str, Any] | None = None,
                           embedding_model: str | None = None, dimensions: int | None = None,
                           status: str = "completed") -> VectorStoreRecord:
        """A store with its (empty) collection; the width is the model's (400 when `dimensions`
        disagrees), Conflict when the user already has a store of that name."""
        registry = self._embeddings.registry
        resolved = await _call(registry.resolve, embedding_model or registry.default_model)
        width = store_dimensions(dimensions, resolved.info.dimension, resolved.info.model_id)
        record = await _call(self._meta.create, user.id, name=name, metadata=dict(metadata or {}),
                             embedding_model=resolved.info.model_id, embedding_provider=resolved.provider.name,
                             dimensions=width, status=status)
        try:
            await _call(self._vectors(user).ensure_collection, record.id, width)
        except BaseException:
            await _call(self._meta.delete, user.id, record.id)  # no store without its collection
            raise
        return record

    async def list_stores(self, user: User, *, limit: int = 20, order: Order = "desc", after: str | None = None,
                          before: str | None = None) -> tuple[list[VectorStoreRecord], bool]:
        return await _call(self._meta.list_stores, user.id, limit=limit, order=order, after=after, before=before)

    async def get_store(self, user: User, store_id: str) -> VectorStoreRecord:
        return await _call(self._meta.get, user.id, store_id)

    async def modify_store(self, user: User, store_id: str, *, name: str | None = None,
                           metadata: Mapping[str, Any] | None = None) -> VectorStoreRecord:
        """Rename and/or replace the metadata (OpenAI's modify); Conflict on a name clash."""
        return await _call(self._meta.update, user.id, store_id, name=name,
                           metadata=dict(metadata) if metadata is not None else None)

    async def delete_store(self, user: User, store_id: str) -> None:
        """Stop the store's batches, then drop its vectors, its record and its batch records."""
        store = await self.get_store(user, store_id)
        await self._stop_batches(store.id)
        await _call(self._vectors(user).delete_collection, store.id)
        await _call(self._meta.delete, user.id, store.id)
        await _call(self._batches.delete_for_store, user.id, store.id)

    # --- vectors ---------------------------------------------------------------------------------
    async def upsert_vectors(self, user: User, store_id: str, records: Sequence[VectorInput]) -> list[str]:
        """Insert or replace records, all or nothing; returns their ids (generated where absent)."""
        store = await self.get_store(user, store_id)
        prepared = prepare_records(records, self._width(store), MAX_UPSERT_RECORDS)
        await self._write(user, store, prepared)
        await self._refresh(user, store.id)
        return [record.id for record in prepared]

    async def list_vectors(self, user: User, store_id: str, *, limit: int = 20, offset: int = 0,
                           where: Mapping[str, Any] | None = None,
                           include_values: bool = False) -> tuple[list[VectorRecord], bool]:
        """One page of records in insertion order, optionally filtered, and whether more follow."""
        limit, offset = check_page(limit, offset, MAX_LIST_VECTORS)
        where = checked_where(where)
        store = await self.get_store(user, store_id)
        rows = await _call(self._vectors(user).get, store.id, where=where, limit=limit + 1, offset=offset,
                           include_vectors=include_values)
        return rows[:limit], len(rows) > limit

    async def get_vector(self, user: User, store_id: str, vector_id: str,
                         include_values: bool = False) -> VectorRecord:
        store = await self.get_store(user, store_id)
        rows = await _call(self._vectors(user).get, store.id, ids=[vector_id], include_vectors=include_values)
        if not rows:
            raise NotFound(f"vector {vector_id!r} not found", param="vector_id")
        return rows[0]

    async def delete_vector(self, user: User, store_id: str, vector_id: str) -> None:
        store = await self.get_store(user, store_id)
        if await _call(self._vectors(user).delete, store.id, [vector_id]) == 0:
            raise NotFound(f"vector {vector_id!r} not found", param="vector_id")
        await self._refresh(user, store.id)

    # --- retrieval -------------------------------------------------------------------------------
    async def query(self, user: User, store_id: str, *, text: str | None = None, vector: Sequence[float] | None = None,
                    top_k: int = 10, where: Mapping[str, Any] | None = None) -> list[VectorHit]:
        """Nearest records to a text (embedded with the store's model) or a vector, best first."""
        validate_top_k(top_k)
        where = checked_where(where)
        store = await self.get_store(user, store_id)
        query = query_vector(text, vector, self._width(store))
        if query is None:
            query = (await self._embed(user, store, [str(text)]))[0]
        return await _call(self._vectors(user).query, store.id, query, top_k, where)

    async def search(self, user: User, store_id: str, call: SearchCall) -> list[VectorHit]:
        """OpenAI's search: every query embedded, hits merged (best score per record), thresholded."""
        limit = call.max_num_results
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_SEARCH_RESULTS:
            raise InvalidInput(f"max_num_results must be between 1 and {MAX_SEARCH_RESULTS}", param="max_num_results")
        if not 1 <= len(call.queries) <= MAX_SEARCH_QUERIES or not all(q.strip() for q in call.queries):
            raise InvalidInput(f"query must be 1 to {MAX_SEARCH_QUERIES} non-empty strings", param="query")
        where = None if call.filters is None else checked_where(openai_filter_to_where(call.filters), "filters")
        store = await self.get_store(user, store_id)
        vectors = await self._embed(user, store, list(call.queries))
        collection = self._vectors(user)
        hit_lists = [await _call(collection.query, store.id, row, limit, where) for row in vectors]
        return merge_hits(hit_lists, limit, call.score_threshold)

    # --- batches ---------------------------------------------------------------------------------
    async def start_batch(self, user: User, store_id: str, records: Sequence[VectorInput]) -> BatchRecord:
        """An `in_progress` batch, answered at once; its records are written in the background and
        counted one by one (a bad record fails alone, the batch then ends `failed`)."""
        check_record_count(len(records), MAX_BATCH_RECORDS)
        check_unique_ids(records)
        store = await self.get_store(user, store_id)
        self._check_open()
        batch = await _call(self._batches.create, user.id, store.id, total=len(records))
        self._spawn(user, store, batch.id, partial(self._records_job, user, store, batch.id, list(records)))
        return batch

    async def get_batch(self, user: User, store_id: str, batch_id: str) -> BatchRecord:
        store = await self.get_store(user, store_id)
        return await _call(self._batches.get, user.id, batch_id, store.id)

    async def list_batches(self, user: User, store_id: str, *, limit: int = 20, order: Order = "desc",
                           after: str | None = None, before: str | None = None,
                           status: str | None = None) -> tuple[list[BatchRecord], bool]:
        store = await self.get_store(user, store_id)
        return await _call(self._batches.list_for_store, user.id, store.id, limit=limit, order=order,
                           after=after, before=before, status=status)

    async def cancel_batch(self, user: User, store_id: str, batch_id: str) -> BatchRecord:
        """Cancel a running batch (what it wrote stays); a finished one comes back unchanged."""
        batch = await self.get_batch(user, store_id, batch_id)
        record = await _call(self._batches.cancel, user.id, batch.id)
        running = self._running.get(batch.id)
        if running is not None:
            running.task.cancel()
            await asyncio.wait({running.task})
        return record

    async def wait_for_batch(self, batch_id: str, timeout: float | None = None) -> bool:
        """Wait until a batch of this process has finished; False on timeout. A batch that is not
        running here (finished, or unknown) returns True at once."""
        running = self._running.get(batch_id)
        if running is None:
            return True
        try:
            await asyncio.wait_for(running.done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def create_from_media(self, user: User, call: MediaStoreCall) -> tuple[VectorStoreRecord, BatchRecord]:
        """A new store (status `in_progress`) and the batch that fills it with the chunks of the
        given media, one count per media item; the store turns `completed` when the batch ends."""
        options = self._chunking_options(call)
        ids = tuple(dict.fromkeys(call.media_ids))
        if not 1 <= len(ids) <= MAX_MEDIA_PER_STORE:
            raise InvalidInput(f"media_ids must hold 1 to {MAX_MEDIA_PER_STORE} ids", param="media_ids")
        media_db = self._storage.media_dbs.get(user.id)
        media = [await _call(media_db.get_media, media_id) for media_id in ids]
        self._check_open()
        store = await self.create_store(user, name=call.name, metadata=call.metadata,
                                        embedding_model=call.embedding_model, dimensions=call.dimensions,
                                        status="in_progress")
        batch = await _call(self._batches.create, user.id, store.id, total=len(media))
        job = partial(self._media_job, user, store, batch.id, media, options, call.reuse_chunks)
        self._spawn(user, store, batch.id, job, finish_store=True)
        return store, batch

    async def aclose(self) -> None:
        """Refuse new batches, cancel the running ones and wait until they have recorded it."""
        self._closed = True
        running = list(self._running.items())
        for _, item in running:
            item.task.cancel()
        if running:
            await asyncio.wait({item.task for _, item in running})
        for batch_id, item in running:  # a task cancelled before it started recorded nothing
            await _call(self._batches.cancel, item.user_id, batch_id)

    # --- internals -------------------------------------------------------------------------------
    @staticmethod
    def _width(store: VectorStoreRecord) -> int:
        if store.dimensions is None:
            raise ServiceUnavailable(f"vector store {store.id!r} has no dimension recorded")
        return store.dimensions

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceUnavailable("the server is shutting down; retry shortly", retry_after=5)

    async def _embed(self, user: User, store: VectorStoreRecord, texts: list[str]) -> np.ndarray:
        """Texts embedded with the store's own model, in bounded calls; rows of the store's width."""
        model = f"{store.embedding_provider}:{store.embedding_model}"
        parts = []
        for start in range(0, len(texts), EMBED_BATCH):
            result = await self._embeddings.embed_texts(model, texts[start:start + EMBED_BATCH], user)
            if result.dimension != store.dimensions:
                raise ProviderError(f"model '{store.embedding_model}' returned {result.dimension}-wide vectors, "
                                    f"the store holds {store.dimensions}", code="dimension_mismatch")
            parts.append(result.vectors)
        return np.concatenate(parts, axis=0)

    async def _write(self, user: User, store: VectorStoreRecord, records: Sequence[PreparedRecord]) -> None:
        to_embed = [r for r in records if r.values is None]
        embedded = await self._embed(user, store, [r.content for r in to_embed]) if to_embed else None
        rows = {r.id: embedded[i] for i, r in enumerate(to_embed)} if embedded is not None else {}
        matrix = np.stack([r.values if r.values is not None else rows[r.id] for r in records])
        await _call(self._vectors(user).upsert, store.id, [r.id for r in records], matrix,
                    [r.content for r in records], [r.metadata for r in records])

    async def _refresh(self, user: User, store_id: str, status: str | None = None) -> None:
        """Record the store's vector count and size (and status) after a write."""
        count = await _call(self._vectors(user).count, store_id)
        store = await self.get_store(user, store_id)
        await _call(self._meta.update, user.id, store_id, vector_count=count, status=status,
                    usage_bytes=usage_bytes(count, store.dimensions or 0))

    async def _stop_batches(self, store_id: str) -> None:
        tasks = {item.task for item in self._running.values() if item.store_id == store_id}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _spawn(self, user: User, store: VectorStoreRecord, batch_id: str,
               job: Callable[[], Awaitable[_Tally]], finish_store: bool = False) -> None:
        coro: Coroutine[Any, Any, None] = self._run_batch(user, store.id, batch_id, job, finish_store)
        running = _Running(user.id, store.id, asyncio.create_task(coro, name=f"vector-store-batch-{batch_id}"))
        self._running[batch_id] = running

        def forget(_: asyncio.Task[None]) -> None:
            self._running.pop(batch_id, None)
            running.done.set()

        running.task.add_done_callback(forget)

    async def _run_batch(self, user: User, store_id: str, batch_id: str, job: Callable[[], Awaitable[_Tally]],
                         finish_store: bool) -> None:
        try:
            tally = await job()
            await self._finish(user, batch_id, "failed" if tally.failed else "completed", tally.error)
        except asyncio.CancelledError:
            await _call(self._batches.cancel, user.id, batch_id)
            raise
        except Exception as exc:  # noqa: BLE001 - a batch records its failure; the server goes on
            logger.opt(exception=exc).warning("vector store batch {} failed", batch_id)
            await self._finish(user, batch_id, "failed", exc)
        finally:
            try:
                await self._refresh(user, store_id, "completed" if finish_store else None)
            except NotFound:
                pass  # the store was deleted meanwhile
            except Exception as exc:  # noqa: BLE001 - the counts are refreshed by the next write
                logger.warning("vector store {}: could not refresh its counts: {}", store_id, exc)

    async def _finish(self, user: User, batch_id: str, status: str, error: str | BaseException | None) -> None:
        try:
            await _call(self._batches.update, user.id, batch_id, status=status, error=error)
        except (Conflict, NotFound):
            pass  # cancelled, or its store deleted, while it ran: that outcome stands

    async def _records_job(self, user: User, store: VectorStoreRecord, batch_id: str,
                           records: list[VectorInput]) -> _Tally:
        tally = _Tally()
        for start in range(0, len(records), EMBED_BATCH):
            good, bad = triage_records(records[start:start + EMBED_BATCH], self._width(store), start)
            step = _Tally(failed=len(bad), error=bad[0].message if bad else None)
            if good:
                try:
                    await self._write(user, store, good)
                    step.completed = len(good)
                except (InvalidInput, ProviderError, ServiceUnavailable) as exc:
                    step.fail(len(good), exc)
            tally.completed += step.completed
            tally.failed += step.failed
            tally.error = tally.error or step.error
            await _call(self._batches.add_counts, user.id, batch_id, completed=step.completed, failed=step.failed)
        return tally

    async def _media_job(self, user: User, store: VectorStoreRecord, batch_id: str, media: list[MediaRecord],
                         options: ChunkingOptions, use_stored_chunks: bool) -> _Tally:
        tally = _Tally()
        media_db = self._storage.media_dbs.get(user.id)
        for item in media:
            step = _Tally()
            try:
                chunks = await _call(media_db.list_chunks, item.id) if use_stored_chunks else []
                if not chunks:
                    chunks = await _call(chunk_text, item.content, options)
                if not 0 < len(chunks) <= MAX_CHUNKS_PER_MEDIA:
                    raise InvalidInput(f"media {item.id} gives {len(chunks)} chunks (1 to {MAX_CHUNKS_PER_MEDIA})")
                inputs = media_chunk_records(item.id, item.title, item.content_hash, chunks)
                for start in range(0, len(inputs), EMBED_BATCH):
                    await self._write(user, store, prepare_records(inputs[start:start + EMBED_BATCH],
                                                                   self._width(store), EMBED_BATCH))
                step.completed = 1
            except (InvalidInput, NotFound, ProviderError, ServiceUnavailable) as exc:
                step.fail(1, exc)
            tally.completed += step.completed
            tally.failed += step.failed
            tally.error = tally.error or step.error
            await _call(self._batches.add_counts, user.id, batch_id, completed=step.completed, failed=step.failed)
        return tally

    def _chunking_options(self, call: MediaStoreCall) -> ChunkingOptions:
        defaults = self._chunking
        size = call.chunk_size if call.chunk_size is not None else (defaults.max_size if defaults else 1000)
        overlap = call.chunk_overlap
        if overlap is None:  # the default overlap, but never most of a chunk the caller made small
            overlap = min(defaults.overlap if defaults else 200, size // 5) if isinstance(size, int) else 0
        options = ChunkingOptions(method=call.chunk_method or (defaults.method if defaults else "words"),
                                  max_size=size, overlap=overlap)
        validate_options(options, defaults.max_allowed_size if defaults else None)
        return options
