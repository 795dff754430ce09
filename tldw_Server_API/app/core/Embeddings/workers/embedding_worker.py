"""Embedding stage: embed one sub-batch of chunks with the job's provider and model and emit the
storage message carrying vectors, ids, texts and the chunk metadata of ARCHITECTURE.md section 4
(with each chunk's `chunk_hash`). The job's cancel is checked first; a sub-batch whose chunks this
job already stored (a resume, a redelivery after the store write) is not embedded again: its job
is only settled. With `reuse_unchanged`, a chunk whose text hash, provider and model match a
vector already stored for the media (wherever its index moved) reuses that vector: only changed
chunks reach the model. The hash is written with the vector in one upsert by the storage stage,
never before it, so a crash before that write leaves the old hash and the chunk is embedded next
time. The batch is counted once in the job's `processed`, `truncated` and `skipped` counters
however often it is delivered."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from tldw_Server_API.app.core.Embeddings.job_steps import already_stored, settle
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobStatus
from tldw_Server_API.app.core.Embeddings.queue_schemas import (
    ChunkMetadata,
    EmbeddingMessage,
    StorageMessage,
    chunk_hash,
    chunk_id,
    pack_vectors,
)
from tldw_Server_API.app.core.Embeddings.stage_context import StageContext, media_collection


async def reusable_vectors(context: StageContext, message: EmbeddingMessage, hashes: list[str]) -> dict[str, Any]:
    """chunk hash -> the stored vector of the media with that hash, provider and model."""
    name = media_collection(message.user_id, message.embedding_model, context.default_model)
    store = context.vector_stores.for_user(message.user_id)
    where = {"$and": [{"media_id": message.media_id}, {"chunk_hash": {"$in": sorted(set(hashes))}}]}

    def read() -> dict[str, Any]:
        rows = store.get(name, where=where, include_vectors=True)   # a collection not made yet: none
        return {str(r.metadata["chunk_hash"]): r.vector for r in rows
                if r.vector is not None and r.metadata.get("embedding_model") == message.embedding_model
                and r.metadata.get("embedding_provider") == message.embedding_provider}

    return await asyncio.to_thread(read)


async def handle(message: EmbeddingMessage, context: StageContext) -> list[StorageMessage]:
    if not await asyncio.to_thread(context.jobs.advance, message.job_id, JobStatus.EMBEDDING):
        return []   # cancelled or finished: drop
    ids = [chunk_id(message.media_id, c.chunk_index) for c in message.chunks]
    if await already_stored(context, message, ids):
        await settle(context, message)
        return []
    texts = [chunk.text for chunk in message.chunks]
    hashes = [chunk_hash(text) for text in texts]
    reused = await reusable_vectors(context, message, hashes) if message.reuse_unchanged else {}
    fresh = [i for i, digest in enumerate(hashes) if digest not in reused]
    if fresh:
        embedded = await context.embed(message.user_id, message.embedding_provider, message.embedding_model,
                                       [texts[i] for i in fresh])
        provider, model_id, truncated = embedded.provider, embedded.model_id, embedded.truncated
        dimension = int(embedded.vectors.shape[1])
    else:
        provider, model_id, truncated = message.embedding_provider, message.embedding_model, 0
        dimension = len(next(iter(reused.values())))
    vectors = np.empty((len(texts), dimension), dtype=np.float32)
    for row, i in enumerate(fresh):
        vectors[i] = embedded.vectors[row]
    for i, digest in enumerate(hashes):
        if digest in reused:   # same collection and model: the same width
            vectors[i] = reused[digest]
    now = context.clock()
    metadatas = [
        ChunkMetadata(
            media_id=message.media_id, job_id=message.job_id, chunk_index=chunk.chunk_index,
            start_char=chunk.start_char, end_char=chunk.end_char, content_hash=message.content_hash,
            embedding_model=model_id, embedding_provider=provider, embedding_dimension=dimension,
            title=message.title, created_at=now, page=chunk.page, chunk_hash=digest,
        )
        for chunk, digest in zip(message.chunks, hashes, strict=True)
    ]
    if not await asyncio.to_thread(context.jobs.record_embedded, message.job_id, message.batch_index,
                                   chunks=len(texts), truncated=truncated, skipped=len(texts) - len(fresh)):
        return []
    packed, _ = pack_vectors(vectors)
    return [StorageMessage(
        job_id=message.job_id, user_id=message.user_id, media_id=message.media_id, priority=message.priority,
        created_at=now, chunk_ids=ids, documents=texts, vectors_b64=packed, dimension=dimension,
        metadatas=metadatas, batch_index=message.batch_index, batch_count=message.batch_count,
        total_chunks=message.total_chunks, truncated_chunks=truncated,
        idempotency_key=message.idempotency_key, trace_id=message.trace_id,
    )]
