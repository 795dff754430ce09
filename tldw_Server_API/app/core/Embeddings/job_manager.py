"""Media embedding jobs: their lifecycle (create idempotently, supersede, capacity, hand to the
executor). What runs a job is an executor (`pipeline_executor.PipelineExecutor`): the embedded
asyncio one by default, the Redis Streams one with `EMBEDDINGS_PIPELINE=redis`. The stage order
is not known here; job state after creation is written by the stages (`job_steps.py`).

Tier allowances (`TierLimits`, carried by the spec): a start past the user's concurrent-job cap is
refused when the job row would be written (RateLimited); the daily chunk quota is checked here
(used up: QuotaExceeded, no job) and decided exactly by the chunking stage once the job's chunk
count is known (`JobsDB.advance` with a `ChunkQuota`).

A job row is written with its spec (the encoded chunking message, without the text) before the
message is handed over, so a crash between the two leaves a job that start-up resume (embedded)
or the reconciler (Redis) runs; the idempotency key (user, media, content, model, chunking) makes
a repeated create return the job already on its way.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tldw_Server_API.app.core.Embeddings._sql_engine import new_id
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobRecord, JobsDB, JobStatus, day_start
from tldw_Server_API.app.core.Embeddings.pipeline_executor import PipelineExecutor
from tldw_Server_API.app.core.Embeddings.queue_schemas import ChunkingMessage, ChunkOptions, encode
from tldw_Server_API.app.core.errors import QuotaExceeded
from tldw_Server_API.app.core.tracing import traceparent


@dataclass(frozen=True)
class JobSpec:
    user_id: str
    media_id: int
    title: str
    content_hash: str
    provider: str
    model: str
    chunk_options: ChunkOptions
    priority: str = "normal"
    trace_id: str | None = None
    daily_chunk_quota: int = 0       # the user's tier allowance (`TierLimits`); 0: none
    max_active_jobs: int = 0
    reuse_unchanged: bool = False    # reuse stored vectors of unchanged chunks (REEMBED_SKIP_UNCHANGED)
    not_before: datetime | None = None   # scheduled: the re-embed consumer starts it then

    def idempotency_key(self) -> str:
        """Same user, media, content, model and chunking: the same job."""
        parts = (self.user_id, str(self.media_id), self.content_hash, self.provider, self.model,
                 self.chunk_options.model_dump_json())
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:40]


class MediaEmbeddingJobManager:
    def __init__(self, jobs: JobsDB, executor: PipelineExecutor, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.jobs = jobs
        self.executor = executor
        self._clock = clock

    async def start(self) -> None:
        await self.executor.start()

    async def aclose(self) -> None:
        await self.executor.aclose()

    async def check_capacity(self, jobs: int = 1) -> None:
        """Overloaded (429 with Retry-After) when the executor would not take `jobs` more now."""
        await self.executor.check_capacity(jobs)

    async def submit(self, spec: JobSpec, content: str | None = None,
                     page_starts: Sequence[int] | None = None) -> JobRecord:
        """The job for `spec`: the one already queued or running with the same key, else a new one
        (older active jobs of the same media are cancelled: the newest wins). `content` travels in
        the message to executors whose workers may not reach the media DB."""
        key = spec.idempotency_key()
        existing = await asyncio.to_thread(self.jobs.find_active_by_key, spec.user_id, key)
        if existing is not None:
            return existing
        await self.executor.check_capacity()
        if spec.daily_chunk_quota > 0:
            used = await asyncio.to_thread(self.jobs.chunks_used_since, spec.user_id, day_start(self._clock()))
            if used >= spec.daily_chunk_quota:
                raise QuotaExceeded(f"today's {spec.daily_chunk_quota} chunks are used up; the daily chunk quota "
                                    "resets at 00:00 UTC", param="daily_chunks")
        job_id = new_id("job")
        message = ChunkingMessage(
            job_id=job_id, user_id=spec.user_id, media_id=spec.media_id, priority=spec.priority,  # type: ignore[arg-type]
            created_at=self._clock(), content_hash=spec.content_hash, chunk_options=spec.chunk_options,
            embedding_model=spec.model, embedding_provider=spec.provider, title=spec.title,
            idempotency_key=key, trace_id=spec.trace_id or traceparent(), daily_chunk_quota=spec.daily_chunk_quota,
            reuse_unchanged=spec.reuse_unchanged,
        )

        held = spec.not_before is not None and spec.not_before > self._clock()

        def create() -> JobRecord:
            if not held:   # a scheduled job replaces the media's jobs only when it starts (release_due)
                self.jobs.supersede(spec.user_id, spec.media_id)
            return self.jobs.create_job(
                spec.user_id, spec.media_id, embedding_model=spec.model, embedding_provider=spec.provider,
                chunk_method=spec.chunk_options.method, chunk_size=spec.chunk_options.size,
                chunk_overlap=spec.chunk_options.overlap, priority=spec.priority, content_hash=spec.content_hash,
                job_id=job_id, spec=encode(message).decode(), idempotency_key=key, max_active=spec.max_active_jobs,
                not_before=spec.not_before,
            )

        job = await asyncio.to_thread(create)
        if job.held(self._clock()):
            return job    # scheduled: the re-embed consumer enqueues it when its time comes
        if getattr(self.executor, "carries_content", False) and content is not None:
            pages = list(page_starts) if page_starts is not None else None
            message = message.model_copy(update={"content": content, "page_starts": pages})
        try:
            await self.executor.enqueue(message)
        except BaseException as exc:
            await asyncio.to_thread(self.jobs.transition, job_id, JobStatus.FAILED, error=exc)
            raise
        return job

    async def release_due(self) -> int:
        """Start the scheduled jobs whose time has come (the re-embed consumer's step)."""
        started = 0
        for job in await asyncio.to_thread(self.jobs.release_due, self._clock()):
            await asyncio.to_thread(self.jobs.supersede, job.user_id, job.media_id, job.job_id)
            if await self.executor.resubmit(job):
                started += 1
        return started

    async def wait_idle(self) -> None:
        """Until the executor has no job left (tests and graceful drains)."""
        await self.executor.wait_idle()
