"""Chunking stage: read the media text, cut it into chunks (with character offsets) and emit
bounded embedding sub-batches (the media's FTS chunks are swapped only when the job completes).
Pure apart from the media DB read; runs in a worker thread (synchronous)."""

from __future__ import annotations

from tldw_Server_API.app.core.Chunking import ChunkingOptions, chunk_text
from tldw_Server_API.app.core.Embeddings.queue_schemas import (
    ChunkingMessage,
    ChunkPayload,
    EmbeddingMessage,
    split_into_batches,
)
from tldw_Server_API.app.core.Embeddings.workers.base_worker import StageContext
from tldw_Server_API.app.core.errors import InvalidInput


def handle(message: ChunkingMessage, context: StageContext) -> list[EmbeddingMessage]:
    media_db = context.media_dbs.get(message.user_id)
    media = media_db.get_media(message.media_id)
    content = message.content if message.content is not None else media.content
    options = ChunkingOptions(
        method=message.chunk_options.method, max_size=message.chunk_options.size,
        overlap=message.chunk_options.overlap, max_chunks=message.chunk_options.max_chunks,
    )
    chunks = chunk_text(content, options)
    if not chunks:
        raise InvalidInput("the media has no text to embed", param="media_id")
    payloads = [
        ChunkPayload(chunk_index=c.index, text=c.text, start_char=c.start_char, end_char=c.end_char) for c in chunks
    ]
    batches = split_into_batches(payloads, context.max_chunks_per_batch)
    return [
        EmbeddingMessage(
            job_id=message.job_id, user_id=message.user_id, media_id=message.media_id,
            priority=message.priority, created_at=context.clock(), content_hash=message.content_hash,
            embedding_model=message.embedding_model, embedding_provider=message.embedding_provider,
            title=message.title or media.title, chunks=batch, batch_index=i, batch_count=len(batches),
            total_chunks=len(payloads),
        )
        for i, batch in enumerate(batches)
    ]
