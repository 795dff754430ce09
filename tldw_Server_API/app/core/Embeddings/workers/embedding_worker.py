"""Embedding stage: embed one sub-batch of chunks with the job's provider and model and emit the
storage message carrying vectors, ids, texts and the chunk metadata of ARCHITECTURE.md section 4."""

from __future__ import annotations

from tldw_Server_API.app.core.Embeddings.queue_schemas import (
    ChunkMetadata,
    EmbeddingMessage,
    StorageMessage,
    chunk_id,
    pack_vectors,
)
from tldw_Server_API.app.core.Embeddings.stage_context import StageContext


async def handle(message: EmbeddingMessage, context: StageContext) -> StorageMessage:
    texts = [chunk.text for chunk in message.chunks]
    embedded = await context.embed(message.user_id, message.embedding_provider, message.embedding_model, texts)
    dimension = int(embedded.vectors.shape[1])
    now = context.clock()
    metadatas = [
        ChunkMetadata(
            media_id=message.media_id, chunk_index=chunk.chunk_index, start_char=chunk.start_char,
            end_char=chunk.end_char, content_hash=message.content_hash, embedding_model=embedded.model_id,
            embedding_provider=embedded.provider, embedding_dimension=dimension, title=message.title,
            created_at=now, page=chunk.page,
        )
        for chunk in message.chunks
    ]
    packed, _ = pack_vectors(embedded.vectors)
    return StorageMessage(
        job_id=message.job_id, user_id=message.user_id, media_id=message.media_id, priority=message.priority,
        created_at=now, chunk_ids=[chunk_id(message.media_id, c.chunk_index) for c in message.chunks],
        documents=texts, vectors_b64=packed, dimension=dimension, metadatas=metadatas,
        batch_index=message.batch_index, batch_count=message.batch_count, total_chunks=message.total_chunks,
        truncated_chunks=embedded.truncated,
    )
