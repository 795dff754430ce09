"""Storage stage: upsert one sub-batch of chunk vectors into the user's media collection under
deterministic ids (a re-run overwrites, never duplicates), then drop chunks of an earlier, longer
version (index >= the new chunk count) and the media's vectors in the user's other media
collections (an earlier embedding with another model), so search never serves two versions.
A media item deleted while its job ran gets no vectors: they are checked for after the upsert and
removed, and the job fails with NotFound. Synchronous; runs in a worker thread."""

from __future__ import annotations

from tldw_Server_API.app.core.Embeddings.queue_schemas import StorageMessage
from tldw_Server_API.app.core.Embeddings.stage_context import StageContext, media_collection
from tldw_Server_API.app.core.errors import NotFound


def handle(message: StorageMessage, context: StageContext) -> int:
    """Stores the batch; returns how many stale chunks of the media were removed."""
    if not message.metadatas:
        return 0
    model_id = message.metadatas[0].embedding_model
    store = context.vector_stores.for_user(message.user_id)
    name = media_collection(message.user_id, model_id, context.default_model)
    store.ensure_collection(name, message.dimension)
    store.upsert(
        name, message.chunk_ids, message.vectors(), documents=message.documents,
        metadatas=[m.to_store_dict() for m in message.metadatas],
    )
    if message.media_id not in context.media_dbs.get(message.user_id).live_media_ids([message.media_id]):
        store.delete_where(name, {"media_id": message.media_id})
        raise NotFound(f"media {message.media_id} not found", param="media_id")
    stale = {"$and": [{"media_id": message.media_id}, {"chunk_index": {"$gte": message.total_chunks}}]}
    removed = store.delete_where(name, stale)
    prefix = media_collection(message.user_id, "", None)
    for other in store.list_collections():
        if other != name and other.startswith(prefix):
            removed += store.delete_where(other, {"media_id": message.media_id})
    return removed
