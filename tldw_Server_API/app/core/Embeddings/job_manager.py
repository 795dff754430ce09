"""Media embedding jobs: creation, status, cancellation, and the embedded (in-process) executor
that runs the stage handlers chunk -> embed -> store for each job with bounded concurrency.

The queue is bounded: a full queue refuses new jobs at once (`Overloaded`, 429) before any job row
is written. Job state moves only through `JobsDB.transition` (compare-and-set), so a cancel that
lands mid-run stops the job at the next stage boundary. Synchronous stores run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from loguru import logger

from tldw_Server_API.app.core.Chunking import Chunk
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobRecord, JobsDB, JobStatus
from tldw_Server_API.app.core.Embeddings.queue_schemas import (
    ChunkingMessage,
    ChunkOptions,
    EmbeddingMessage,
    StorageMessage,
)
from tldw_Server_API.app.core.Embeddings.stage_context import StageContext
from tldw_Server_API.app.core.Embeddings.workers import chunking_worker, embedding_worker, storage_worker
from tldw_Server_API.app.core.errors import Overloaded, TLDWError


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


class MediaEmbeddingJobManager:
    def __init__(self, jobs: JobsDB, context: StageContext, *, concurrency: int, queue_size: int) -> None:
        self.jobs = jobs
        self._context = context
        self._queue: asyncio.Queue[ChunkingMessage] | None = None
        self._queue_size = queue_size
        self._concurrency = concurrency
        self._workers: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._running = 0

    def start(self) -> None:
        """Start the worker tasks (inside the running loop) after failing jobs a crash left behind."""
        recovered = self.jobs.fail_stale_running_jobs(include_queued=True)
        if recovered:
            logger.warning("media embeddings: {} interrupted job(s) marked failed", recovered)
        self._queue = asyncio.Queue(maxsize=self._queue_size)
        self._idle.set()
        self._workers = [asyncio.create_task(self._worker(i)) for i in range(self._concurrency)]

    async def aclose(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []

    def _require_queue(self) -> asyncio.Queue[ChunkingMessage]:
        if self._queue is None:
            raise RuntimeError("job manager not started")
        return self._queue

    def has_capacity(self, jobs: int = 1) -> bool:
        queue = self._require_queue()
        return queue.maxsize - queue.qsize() >= jobs

    def submit(self, spec: JobSpec) -> JobRecord:
        queue = self._require_queue()
        if queue.full():
            raise Overloaded("the embedding job queue is full; retry later", retry_after=5)
        job = self.jobs.create_job(
            spec.user_id, spec.media_id, embedding_model=spec.model, embedding_provider=spec.provider,
            chunk_method=spec.chunk_options.method, chunk_size=spec.chunk_options.size,
            chunk_overlap=spec.chunk_options.overlap, priority=spec.priority, content_hash=spec.content_hash,
        )
        message = ChunkingMessage(
            job_id=job.job_id, user_id=spec.user_id, media_id=spec.media_id, priority=spec.priority,  # type: ignore[arg-type]
            created_at=self._context.clock(), content_hash=spec.content_hash, chunk_options=spec.chunk_options,
            embedding_model=spec.model, embedding_provider=spec.provider, title=spec.title,
        )
        self._idle.clear()
        queue.put_nowait(message)
        return job

    async def wait_idle(self) -> None:
        """Until every queued job has finished (tests and graceful drains)."""
        queue = self._require_queue()
        while not (queue.empty() and self._running == 0):
            self._idle.clear()
            await self._idle.wait()

    async def _worker(self, _number: int) -> None:
        queue = self._require_queue()
        while True:
            message = await queue.get()
            self._running += 1
            try:
                await self._run(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad job must never stop the worker
                self._fail(message.job_id, exc)
            finally:
                self._running -= 1
                queue.task_done()
                if queue.empty() and self._running == 0:
                    self._idle.set()

    def _fail(self, job_id: str, exc: BaseException) -> None:
        if not isinstance(exc, TLDWError):
            logger.opt(exception=exc).error("media embeddings: job {} crashed", job_id)
        with contextlib.suppress(TLDWError):
            self.jobs.transition(job_id, JobStatus.FAILED, error=exc)

    async def _run(self, message: ChunkingMessage) -> None:
        job_id = message.job_id
        if not self.jobs.transition(job_id, JobStatus.CHUNKING):
            return
        batches = await asyncio.to_thread(chunking_worker.handle, message, self._context)
        total = batches[0].total_chunks
        if not self.jobs.transition(job_id, JobStatus.EMBEDDING, total_chunks=total):
            return
        stored: list[StorageMessage] = []
        for batch in batches:
            storage = await embedding_worker.handle(batch, self._context)
            stored.append(storage)
            if not self.jobs.add_progress(job_id, processed=len(batch.chunks), truncated=storage.truncated_chunks):
                return  # cancelled between sub-batches
        if not self.jobs.transition(job_id, JobStatus.STORING):
            return
        for storage in stored:
            await asyncio.to_thread(storage_worker.handle, storage, self._context)
            if not self.jobs.add_progress(job_id, stored=len(storage.chunk_ids)):
                return
        await asyncio.to_thread(self._refresh_fts, message, batches)
        self.jobs.transition(job_id, JobStatus.COMPLETED)

    def _refresh_fts(self, message: ChunkingMessage, batches: list[EmbeddingMessage]) -> None:
        """FTS chunks follow the vectors only once they are stored: a failed or cancelled re-embed
        leaves the previous chunking searchable in both modes, consistently."""
        chunks = [Chunk(c.chunk_index, c.text, c.start_char, c.end_char, c.page) for b in batches for c in b.chunks]
        self._context.media_dbs.get(message.user_id).replace_chunks(message.media_id, chunks)
