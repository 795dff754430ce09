"""Storage stage: upsert one sub-batch of chunk vectors into the user's media collection under
deterministic ids (a redelivery overwrites, never duplicates), then settle the job: its stored
count is read from the store, and the step that sees it reach the total completes the job
(`job_steps.settle`). A media item deleted while its job ran gets no vectors: they are checked for
after the upsert and removed, and the job fails with NotFound. Blocking work runs in a thread."""

from __future__ import annotations

import asyncio

from tldw_Server_API.app.core.Embeddings.job_steps import settle
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobStatus
from tldw_Server_API.app.core.Embeddings.queue_schemas import StorageMessage
from tldw_Server_API.app.core.Embeddings.stage_context import StageContext, media_collection
from tldw_Server_API.app.core.errors import NotFound


def write(message: StorageMessage, context: StageContext) -> None:
    if not message.metadatas:
        return
    model_id = message.metadatas[0].embedding_model
    store = context.vector_stores.for_user(message.user_id)
    name = media_collection(message.user_id, model_id, context.default_model)
    store.ensure_collection(name, message.dimension)
    store.upsert(
        name, message.chunk_ids, message.vectors(), documents=message.documents,
        metadatas=[m.to_store_dict() for m in message.metadatas],
    )
    if message.media_id not in context.media_dbs.get(message.user_id).live_media_ids([message.media_id]):
        store.delete_where(name, {"job_id": message.job_id})
        raise NotFound(f"media {message.media_id} not found", param="media_id")


async def handle(message: StorageMessage, context: StageContext) -> list[StorageMessage]:
    if not await asyncio.to_thread(context.jobs.advance, message.job_id, JobStatus.STORING):
        return []   # cancelled or finished: drop
    await asyncio.to_thread(write, message, context)
    await settle(context, message)
    return []
