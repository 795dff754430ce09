"""The job bookkeeping the stage handlers share: whether a sub-batch is already stored by its job,
and `settle`, which reads the job's stored count from the vector store (chunks carry their job's
id) and, when it reaches the total, finishes the job: drops chunks of an earlier, longer version
and the media's vectors in the user's other media collections (an earlier model), swaps the
media's FTS chunks for the stored ones, then completes the job by compare-and-set. Every step is
idempotent, so a redelivered or concurrent settle changes nothing. Blocking work runs in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from tldw_Server_API.app.core.Chunking import Chunk
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobStatus
from tldw_Server_API.app.core.Embeddings.queue_schemas import EmbeddingMessage, StorageMessage
from tldw_Server_API.app.core.Embeddings.stage_context import StageContext, media_collection, media_collections
from tldw_Server_API.app.core.errors import InvalidInput, NotFound


@dataclass(frozen=True)
class _Target:
    job_id: str
    user_id: str
    media_id: int
    model_id: str
    content_hash: str
    total: int


def _target(message: EmbeddingMessage | StorageMessage) -> _Target:
    if isinstance(message, EmbeddingMessage):
        model_id, content_hash = message.embedding_model, message.content_hash
    else:
        model_id, content_hash = message.metadatas[0].embedding_model, message.metadatas[0].content_hash
    return _Target(message.job_id, message.user_id, message.media_id, model_id, content_hash, message.total_chunks)


async def already_stored(context: StageContext, message: EmbeddingMessage, ids: Sequence[str]) -> bool:
    """Whether every chunk of this sub-batch is in the store, written by this job."""
    name = media_collection(message.user_id, message.embedding_model, context.default_model)
    store = context.vector_stores.for_user(message.user_id)
    rows = await asyncio.to_thread(store.get, name, ids=list(ids))
    return len(rows) == len(ids) and all(r.metadata.get("job_id") == message.job_id for r in rows)


async def settle(context: StageContext, message: EmbeddingMessage | StorageMessage) -> bool:
    """Record the job's stored count; complete it when every chunk is stored. True when this call
    completed the job."""
    return await asyncio.to_thread(_settle, context, _target(message))


def _settle(context: StageContext, target: _Target) -> bool:
    jobs = context.jobs
    if not jobs.advance(target.job_id, JobStatus.STORING):
        return False
    store = context.vector_stores.for_user(target.user_id)
    name = media_collection(target.user_id, target.model_id, context.default_model)
    stored = store.count(name, {"job_id": target.job_id})
    if stored >= target.total:
        _finish(context, target, name)
    return jobs.record_stored(target.job_id, stored)


def _finish(context: StageContext, target: _Target, name: str) -> None:
    store = context.vector_stores.for_user(target.user_id)
    stale = {"$and": [{"media_id": target.media_id}, {"chunk_index": {"$gte": target.total}}]}
    store.delete_where(name, stale)
    for other in media_collections(target.user_id, store.list_collections()):
        if other != name:
            store.delete_where(other, {"media_id": target.media_id})
    _refresh_fts(context, target, name)


def _refresh_fts(context: StageContext, target: _Target, name: str) -> None:
    """The media's FTS chunks follow its vectors only once they are all stored: a failed or
    cancelled re-embed leaves the previous chunking searchable in both modes, consistently."""
    media_db = context.media_dbs.get(target.user_id)
    rows = context.vector_stores.for_user(target.user_id).get(name, where={"job_id": target.job_id})
    chunks = sorted(
        (Chunk(int(r.metadata["chunk_index"]), r.document or "", int(r.metadata["start_char"]),
               int(r.metadata["end_char"]), int(r.metadata["page"]) if "page" in r.metadata else None)
         for r in rows),
        key=lambda c: c.index,
    )
    try:
        if media_db.get_media(target.media_id).content_hash == target.content_hash:
            media_db.replace_chunks(target.media_id, chunks)
    except (NotFound, InvalidInput):
        pass   # deleted or changed since: its own upload wrote its FTS chunks
