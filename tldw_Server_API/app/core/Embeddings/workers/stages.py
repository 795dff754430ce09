"""The stage table: which handler runs a message of each stage. Every handler has one shape,
`async handle(message, context) -> list[next messages]`, and both executors (the embedded one and
the Redis Streams delivery loop) call it through `run_stage`, so the stage order lives here only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tldw_Server_API.app.core.Embeddings.queue_schemas import PipelineMessage
from tldw_Server_API.app.core.Embeddings.stage_context import StageContext
from tldw_Server_API.app.core.Embeddings.workers import chunking_worker, embedding_worker, storage_worker
from tldw_Server_API.app.core.tracing import stage_span

STAGES = ("chunking", "embedding", "storage")
Handler = Callable[[Any, StageContext], Awaitable[Sequence[PipelineMessage]]]
HANDLERS: dict[str, Handler] = {
    "chunking": chunking_worker.handle,
    "embedding": embedding_worker.handle,
    "storage": storage_worker.handle,
}


async def run_stage(message: PipelineMessage, context: StageContext) -> list[PipelineMessage]:
    """Run the message's stage; the messages of the next stage (none once the job is settled).
    Its span joins the trace of the request that created the job (the message's traceparent)."""
    with stage_span(f"pipeline.{message.stage}", message.trace_id, job_id=message.job_id,
                    batch_index=getattr(message, "batch_index", 0), attempt=message.attempt):
        return list(await HANDLERS[message.stage](message, context))
