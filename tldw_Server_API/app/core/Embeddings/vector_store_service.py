"""`VectorStoreService`: the OpenAI-compatible vector stores behind `vector_stores_openai.py`.

Store records live in `VectorStoreMetaDB`, vectors in the user's `VectorStore` under a collection
named after the store id (`vs_<hex>`), batches in `VectorStoreBatchesDB`; content is embedded with
the store's model. Every blocking call runs in a worker thread; batches run as asyncio tasks
(`BatchTasks`), cancelled in `aclose()`. A batch records its spec (its records, or its media and
chunking) when it starts, and `start()` resumes those a stopped or killed process left running:
their counts are recounted from zero, records already in the store as written are not written
again, so counts end equal to what the store holds. Pure checks live in `vector_store_records`.
Raises domain errors only; imports no web framework.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import orjson
from loguru import logger

from tldw_Server_API.app.core.AuthNZ.api_keys import User
from tldw_Server_API.app.core.Chunking import ChunkingOptions, OffsetsTokenizer, chunk_document
from tldw_Server_API.app.core.config import ChunkingDefaults
from tldw_Server_API.app.core.DB_Management.Media_DB import MediaRecord
from tldw_Server_API.app.core.Embeddings._sql_engine import Order
from tldw_Server_API.app.core.Embeddings.chunk_windows import resolve_chunking
from tldw_Server_API.app.core.Embeddings.embedding_service import EmbeddingService
from tldw_Server_API.app.core.Embeddings.vector_store_batch_tasks import BatchTally, BatchTasks
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
    decode_record,
    encode_record,
    media_chunk_records,
    merge_hits,
    new_vector_id,
    openai_filter_to_where,
    prepare_records,
    query_vector,
    store_dimensions,
    triage_records,
    usage_bytes,
)
from tldw_Server_API.app.core.errors import InvalidInput, NotFound, ProviderError, ServiceUnavailable, TLDWError
from tldw_Server_API.app.core.RAG.vector_stores.base import VectorHit, VectorRecord, VectorStore, validate_top_k

if TYPE_CHECKING:
    from tldw_Server_API.app.core.storage import StorageServices

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


def _same(row: VectorRecord | None, record: PreparedRecord) -> bool:
    """A stored row already holds this record's content and metadata (its vector: the same
    content with the store's model, or given values, written in the same step)."""
    return row is not None and row.document == record.content and dict(row.metadata) == dict(record.metadata)


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking store/database call off the event loop."""
    return await asyncio.to_thread(partial(fn, *args, **kwargs))


class VectorStoreService:
    def __init__(self, embeddings: EmbeddingService, storage: StorageServices, chunking: ChunkingDefaults) -> None:
        self._embeddings = embeddings
        self._storage = storage
        self._meta = storage.vector_store_meta
        self._batches = storage.vector_store_batches
        self._chunking = chunking
        self._tasks = BatchTasks(storage.vector_store_batches)
        self._closed = False

    async def start(self) -> None:
        """Resume the batches a stopped or killed process left `in_progress` (their tasks died
        with it); those of an earlier version, without a spec, are marked failed."""
        interrupted = await _call(self._batches.fail_interrupted)
        if interrupted:
            logger.warning("vector stores: {} interrupted batch(es) of an earlier version marked failed", interrupted)
        batches = await _call(self._batches.resumable)
        for batch in batches:
            try:
                await self._resume(batch)
            except TLDWError as exc:   # its store or media are gone
                await _call(self._batches.update, batch.user_id, batch.id, status="failed", error=exc)
        if batches:
            logger.warning("vector stores: resuming {} interrupted batch(es)", len(batches))

    async def _resume(self, batch: BatchRecord) -> None:
        user = User(batch.user_id)
        store = await self.get_store(user, batch.store_id)
        spec = orjson.loads(batch.spec or "{}")
        if not await _call(self._batches.claim_for_resume, batch):
            return   # another process starting with us took it
        if spec.get("kind") == "media":
            model = f"{store.embedding_provider}:{store.embedding_model}"
            window = await _call(self._embeddings.window, model)
            media_db = self._storage.media_dbs.get(user.id)
            media = [await _call(media_db.get_media, media_id) for media_id in spec["media_ids"]]
            options = ChunkingOptions(**spec["chunking"])
            job = partial(self._media_job, user, store, batch.id, media, options, window.tokenizer, spec["reuse"])
            self._tasks.start(user.id, store.id, batch.id, job, partial(self._refresh, user, store.id, "completed"))
        else:
            records = [decode_record(item) for item in spec["records"]]
            self._tasks.start(user.id, store.id, batch.id, partial(self._records_job, user, store, batch.id, records),
                              partial(self._refresh, user, store.id))

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
        await self._tasks.cancel_store(store.id)
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
        named = [r if r.id is not None else replace(r, id=new_vector_id()) for r in records]  # fixed before a resume
        spec = orjson.dumps({"kind": "records", "records": [encode_record(r) for r in named]}).decode()
        batch = await _call(self._batches.create, user.id, store.id, total=len(named), spec=spec)
        self._tasks.start(user.id, store.id, batch.id, partial(self._records_job, user, store, batch.id, named),
                          partial(self._refresh, user, store.id))
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
        """Cancel a running batch after its current step, so its counts say exactly what it wrote
        (and what it wrote stays); a finished batch comes back unchanged."""
        batch = await self.get_batch(user, store_id, batch_id)
        await self._tasks.stop(batch.id)
        return await _call(self._batches.cancel, user.id, batch.id)

    async def wait_for_batch(self, batch_id: str, timeout: float | None = None) -> bool:
        """Wait until a batch of this process has finished; False on timeout. A batch that is not
        running here (finished, or unknown) returns True at once."""
        return await self._tasks.wait(batch_id, timeout)

    async def create_from_media(self, user: User, call: MediaStoreCall) -> tuple[VectorStoreRecord, BatchRecord]:
        """A new store (status `in_progress`) and the batch that fills it with the chunks of the
        given media, one count per media item; the store turns `completed` when the batch ends."""
        window = await _call(self._embeddings.window, call.embedding_model)
        options = resolve_chunking(call.chunk_method, call.chunk_size, call.chunk_overlap, self._chunking, window,
                                   call.embedding_model or "the default model")
        ids = tuple(dict.fromkeys(call.media_ids))
        if not 1 <= len(ids) <= MAX_MEDIA_PER_STORE:
            raise InvalidInput(f"media_ids must hold 1 to {MAX_MEDIA_PER_STORE} ids", param="media_ids")
        media_db = self._storage.media_dbs.get(user.id)
        media = [await _call(media_db.get_media, media_id) for media_id in ids]
        self._check_open()
        store = await self.create_store(user, name=call.name, metadata=call.metadata,
                                        embedding_model=call.embedding_model, dimensions=call.dimensions,
                                        status="in_progress")
        spec = {"kind": "media", "media_ids": list(ids), "reuse": call.reuse_chunks,
                "chunking": {"method": options.method, "max_size": options.max_size, "overlap": options.overlap,
                             "max_chunks": options.max_chunks}}
        batch = await _call(self._batches.create, user.id, store.id, total=len(media), spec=orjson.dumps(spec).decode())
        job = partial(self._media_job, user, store, batch.id, media, options, window.tokenizer, call.reuse_chunks)
        self._tasks.start(user.id, store.id, batch.id, job, partial(self._refresh, user, store.id, "completed"))
        return store, batch

    async def aclose(self) -> None:
        """Refuse new batches, cancel the running ones and wait until they have recorded it."""
        self._closed = True
        await self._tasks.aclose()

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

    async def _write(self, user: User, store: VectorStoreRecord, records: Sequence[PreparedRecord],
                     *, skip_stored: bool = False) -> None:
        """Embed what has no values and upsert. `skip_stored` (batches): records already in the
        store with this content and metadata are left as they are (a resumed batch)."""
        if skip_stored:
            found = await _call(self._vectors(user).get, store.id, ids=[r.id for r in records])
            stored = {row.id: row for row in found}
            records = [r for r in records if not _same(stored.get(r.id), r)]
            if not records:
                return
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

    async def _records_job(self, user: User, store: VectorStoreRecord, batch_id: str,
                           records: list[VectorInput], stop: asyncio.Event) -> BatchTally:
        tally = BatchTally()
        for start in range(0, len(records), EMBED_BATCH):
            if stop.is_set():
                break
            good, bad = triage_records(records[start:start + EMBED_BATCH], self._width(store), start)
            step = BatchTally(failed=len(bad), error=bad[0].message if bad else None)
            if good:
                try:
                    await self._write(user, store, good, skip_stored=True)
                    step.completed = len(good)
                except (InvalidInput, ProviderError, ServiceUnavailable) as exc:
                    step.fail(len(good), exc)
            tally.add(step)
            await _call(self._batches.add_counts, user.id, batch_id, completed=step.completed, failed=step.failed)
        return tally

    async def _media_job(self, user: User, store: VectorStoreRecord, batch_id: str, media: list[MediaRecord],
                         options: ChunkingOptions, tokenizer: OffsetsTokenizer, use_stored_chunks: bool,
                         stop: asyncio.Event) -> BatchTally:
        tally = BatchTally()
        media_db = self._storage.media_dbs.get(user.id)
        for item in media:
            step = BatchTally()
            try:
                chunks = await _call(media_db.list_chunks, item.id) if use_stored_chunks else []
                if not chunks:
                    chunks = await _call(chunk_document, item.content, options, tokenizer, item.page_starts)
                if not 0 < len(chunks) <= MAX_CHUNKS_PER_MEDIA:
                    raise InvalidInput(f"media {item.id} gives {len(chunks)} chunks (1 to {MAX_CHUNKS_PER_MEDIA})")
                inputs = media_chunk_records(item.id, item.title, item.content_hash, chunks)
                for start in range(0, len(inputs), EMBED_BATCH):
                    if stop.is_set():
                        return tally  # this media item stays uncounted: cancelled
                    await self._write(user, store, prepare_records(inputs[start:start + EMBED_BATCH],
                                                                   self._width(store), EMBED_BATCH), skip_stored=True)
                step.completed = 1
            except (InvalidInput, NotFound, ProviderError, ServiceUnavailable) as exc:
                step.fail(1, exc)
            tally.add(step)
            await _call(self._batches.add_counts, user.id, batch_id, completed=step.completed, failed=step.failed)
        return tally

