"""Chunking stage: read the media text, cut it into chunks (character offsets, page numbers of
paged sources; `tokens` chunks in the job model's own tokens, sized to its window) and emit bounded
embedding sub-batches (the media's FTS chunks are swapped only when the job completes). Pure apart
from the media DB read and a tokenizer load; runs in a worker thread (synchronous)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tldw_Server_API.app.core.Chunking import Chunk, OffsetsTokenizer, chunk_document
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


def handle(message: ChunkingMessage, context: StageContext) -> list[EmbeddingMessage]:
    media_db = context.media_dbs.get(message.user_id)
    media = media_db.get_media(message.media_id)
    content = message.content if message.content is not None else media.content
    pages = media.page_starts if message.content is None else None
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
            title=message.title or media.title, chunks=batch, batch_index=i, batch_count=len(batches),
            total_chunks=len(payloads),
        )
        for i, batch in enumerate(batches)
    ]
