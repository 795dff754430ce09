"""Embedding stage: embed one sub-batch of chunks with the job's provider and model and emit the
storage message carrying vectors, ids, texts and the chunk metadata of ARCHITECTURE.md section 4.
The job's cancel is checked first; a sub-batch whose chunks this job already stored (a resume, a
redelivery after the store write) is not embedded again: its job is only settled. The batch is
counted once in the job's `processed` and `truncated` counters however often it is delivered."""

from __future__ import annotations

import asyncio

from tldw_Server_API.app.core.Embeddings.job_steps import already_stored, settle
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobStatus
from tldw_Server_API.app.core.Embeddings.queue_schemas import (
    ChunkMetadata,
    EmbeddingMessage,
    StorageMessage,
    chunk_id,
    pack_vectors,
)
from tldw_Server_API.app.core.Embeddings.stage_context import StageContext


async def handle(message: EmbeddingMessage, context: StageContext) -> list[StorageMessage]:
    if not await asyncio.to_thread(context.jobs.advance, message.job_id, JobStatus.EMBEDDING):
        return []   # cancelled or finished: drop
    ids = [chunk_id(message.media_id, c.chunk_index) for c in message.chunks]
    if await already_stored(context, message, ids):
        await settle(context, message)
        return []
    texts = [chunk.text for chunk in message.chunks]
    embedded = await context.embed(message.user_id, message.embedding_provider, message.embedding_model, texts)
    dimension = int(embedded.vectors.shape[1])
    now = context.clock()
    metadatas = [
        ChunkMetadata(
            media_id=message.media_id, job_id=message.job_id, chunk_index=chunk.chunk_index,
            start_char=chunk.start_char, end_char=chunk.end_char, content_hash=message.content_hash,
            embedding_model=embedded.model_id, embedding_provider=embedded.provider, embedding_dimension=dimension,
            title=message.title, created_at=now, page=chunk.page,
        )
        for chunk in message.chunks
    ]
    if not await asyncio.to_thread(context.jobs.record_embedded, message.job_id, message.batch_index,
                                   chunks=len(texts), truncated=embedded.truncated):
        return []
    packed, _ = pack_vectors(embedded.vectors)
    return [StorageMessage(
        job_id=message.job_id, user_id=message.user_id, media_id=message.media_id, priority=message.priority,
        created_at=now, chunk_ids=ids, documents=texts, vectors_b64=packed, dimension=dimension,
        metadatas=metadatas, batch_index=message.batch_index, batch_count=message.batch_count,
        total_chunks=message.total_chunks, truncated_chunks=embedded.truncated,
        idempotency_key=message.idempotency_key, trace_id=message.trace_id,
    )]
