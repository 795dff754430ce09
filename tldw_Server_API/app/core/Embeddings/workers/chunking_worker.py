"""Chunking stage: read the media text (from the message, else the media DB), cut it into chunks
(character offsets, page numbers of paged sources; `tokens` chunks in the job model's own tokens,
sized to its window) and emit bounded embedding sub-batches. Advances the job to `chunking`, then
to `embedding` with its total, within the user's daily chunk quota (QuotaExceeded otherwise).
Deterministic: a redelivered or resumed message cuts the same chunks, so downstream ids and
counts do not change. Blocking work runs in a thread."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from tldw_Server_API.app.core.Chunking import Chunk, OffsetsTokenizer, chunk_document
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import ChunkQuota, JobStatus, day_start
from tldw_Server_API.app.core.Embeddings.queue_schemas import (
    ChunkingMessage,
    ChunkOptions,
    ChunkPayload,
    EmbeddingMessage,
    split_into_batches,
)
from tldw_Server_API.app.core.Embeddings.stage_context import StageContext
from tldw_Server_API.app.core.errors import InvalidInput


def cut(content: str, page_starts: Sequence[int] | None, chunk_options: ChunkOptions, provider: str, model: str,
        tokenizer_for: Callable[[str, str], OffsetsTokenizer] | None) -> list[Chunk]:
    """The chunks of a text for a job's model: `tokens` chunks in that model's own tokens."""
    options = chunk_options.to_chunking()
    tokenizer = tokenizer_for(provider, model) if options.method == "tokens" and tokenizer_for else None
    return chunk_document(content, options, tokenizer, page_starts)


def split(message: ChunkingMessage, context: StageContext) -> list[EmbeddingMessage]:
    """The embedding messages of a chunking message (synchronous: a media read, a tokenizer load)."""
    pages: Sequence[int] | None
    if message.content is not None:
        content, pages, title = message.content, message.page_starts, message.title
    else:
        media = context.media_dbs.get(message.user_id).get_media(message.media_id)
        content, pages, title = media.content, media.page_starts, message.title or media.title
    chunks = cut(content, pages, message.chunk_options, message.embedding_provider, message.embedding_model,
                 context.tokenizer_for)
    if not chunks:
        raise InvalidInput("the media has no text to embed", param="media_id")
    payloads = [
        ChunkPayload(chunk_index=c.index, text=c.text, start_char=c.start_char, end_char=c.end_char, page=c.page)
        for c in chunks
    ]
    batches = split_into_batches(payloads, context.max_chunks_per_batch)
    return [
        EmbeddingMessage(
            job_id=message.job_id, user_id=message.user_id, media_id=message.media_id,
            priority=message.priority, created_at=context.clock(), content_hash=message.content_hash,
            embedding_model=message.embedding_model, embedding_provider=message.embedding_provider,
            title=title, chunks=batch, batch_index=i, batch_count=len(batches), total_chunks=len(payloads),
            idempotency_key=message.idempotency_key, trace_id=message.trace_id,
            reuse_unchanged=message.reuse_unchanged,
        )
        for i, batch in enumerate(batches)
    ]


async def handle(message: ChunkingMessage, context: StageContext) -> list[EmbeddingMessage]:
    if not await asyncio.to_thread(context.jobs.advance, message.job_id, JobStatus.CHUNKING):
        return []   # cancelled or finished: drop
    batches = await asyncio.to_thread(split, message, context)
    total = batches[0].total_chunks
    quota = None
    if message.daily_chunk_quota:
        quota = ChunkQuota(message.user_id, message.daily_chunk_quota, day_start(context.clock()))
    if not await asyncio.to_thread(context.jobs.advance, message.job_id, JobStatus.EMBEDDING, total_chunks=total,
                                   quota=quota):
        return []
    return batches
