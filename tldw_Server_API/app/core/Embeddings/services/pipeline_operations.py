"""What operators do to the pipeline (the logic behind the admin routes): read and triage dead
letters, requeue approved ones, purge ignored ones, skip a job, change its priority, look a job
up by its idempotency key, reset a provider's circuit breaker in every process, schedule a
re-embed (`reembed_worker.py`) and run the vector compactor (`vector_compactor.py`) once.

A requeue never trusts the dead-lettered payload: it reopens the entry's failed job and runs it
again from the job's stored spec (the jobs DB is the source of truth), under the same job id and
idempotency key. Chunks its earlier run already stored are skipped by id and every write is an
upsert by deterministic id, so requeueing twice stores nothing twice; a job that is already
running or finished is left alone. Audit events are written by the API boundary, not here.
Imports core services only; never FastAPI.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from tldw_Server_API.app.core.AuthNZ.api_keys import User
from tldw_Server_API.app.core.Embeddings.dead_letters import DeadLetter, DeadLetterQueue, check_stage
from tldw_Server_API.app.core.Embeddings.embedding_service import EmbeddingService
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import ACTIVE_STATES, JobRecord, JobsDB, JobStatus
from tldw_Server_API.app.core.Embeddings.media_embedding_service import EmbeddingOptions
from tldw_Server_API.app.core.Embeddings.pipeline_executor import PipelineExecutor
from tldw_Server_API.app.core.Embeddings.services.reembed_worker import ReembedScope, ReembedWorker
from tldw_Server_API.app.core.Embeddings.services.vector_compactor import CompactionReport, VectorCompactor
from tldw_Server_API.app.core.errors import NotFound

EMBEDDED_NOTE = "the embedded pipeline keeps no dead letters (a job that fails permanently is failed); " \
                "they exist with EMBEDDINGS_PIPELINE=redis"


class PipelineOperations:
    def __init__(self, jobs: JobsDB, executor: PipelineExecutor, embeddings: EmbeddingService,
                 dlq: DeadLetterQueue | None, reembed: ReembedWorker, compactor: VectorCompactor) -> None:
        self._jobs = jobs
        self._executor = executor
        self._embeddings = embeddings
        self._dlq = dlq
        self._reembed = reembed
        self.compactor = compactor

    # --- dead letters ----------------------------------------------------------------------------
    def _queue(self) -> DeadLetterQueue:
        if self._dlq is None:
            raise NotFound(EMBEDDED_NOTE, param="stage", code="dlq_not_available")
        return self._dlq

    async def dlq_stats(self) -> dict[str, Any]:
        stages = await self._dlq.stats() if self._dlq is not None else []
        return {"object": "embedding.dlq_stats", "mode": "redis" if self._dlq else "embedded", "stages": stages}

    async def dlq_page(self, stage: str, limit: int, after: str | None) -> tuple[list[DeadLetter], bool]:
        check_stage(stage)
        if self._dlq is None:
            return [], False
        return await self._dlq.page(stage, limit, after)

    async def dlq_get(self, stage: str, letter_id: str) -> DeadLetter:
        return await self._queue().get(check_stage(stage), letter_id)

    async def dlq_set_state(self, stage: str, letter_id: str, state: str, note: str | None, by: str) -> DeadLetter:
        return await self._queue().set_state(check_stage(stage), letter_id, state, note, by)

    async def dlq_purge(self, stage: str) -> int:
        return await self._queue().purge_ignored(check_stage(stage))

    async def dlq_requeue(self, stage: str, ids: list[str], by: str) -> list[dict[str, Any]]:
        """Requeue approved entries (Conflict, nothing done, if any is not approved). One result
        per entry: `requeued` (its job runs again) or `skipped` with the reason."""
        queue = self._queue()
        letters = await queue.approved(check_stage(stage), ids)
        results = []
        for letter in letters:
            outcome, reason = await self._requeue_job(letter)
            await queue.mark_requeued(stage, letter.id, by, letter.note)
            results.append({"id": letter.id, "job_id": letter.job_id, "outcome": outcome, "reason": reason})
        return results

    async def _requeue_job(self, letter: DeadLetter) -> tuple[str, str | None]:
        try:
            job = await asyncio.to_thread(self._jobs.get_by_id, letter.job_id)
        except NotFound:
            return "skipped", "its job does not exist (a payload that named no job)"
        if job.status in ACTIVE_STATES:
            return "skipped", f"its job is already {job.status.value}"
        if job.status != JobStatus.FAILED:
            return "skipped", f"its job is {job.status.value}"
        latest = await asyncio.to_thread(self._jobs.latest_job_for_media, job.user_id, job.media_id)
        if latest is not None and latest.job_id != job.job_id:
            return "skipped", f"a newer job of the media replaced it ({latest.job_id})"
        if not job.spec:
            return "skipped", "its job was created by an earlier version (no spec): start it again"
        if not await asyncio.to_thread(self._jobs.reopen, job.job_id):
            return "skipped", "its job was reopened by another requeue"
        reopened = await asyncio.to_thread(self._jobs.get_by_id, job.job_id)
        await self._executor.resubmit(reopened)
        return "requeued", None

    # --- jobs ------------------------------------------------------------------------------------
    async def skip_job(self, job_id: str) -> JobRecord:
        return await asyncio.to_thread(self._jobs.skip, job_id)

    async def set_priority(self, job_id: str, priority: str) -> tuple[JobRecord, int]:
        job = await asyncio.to_thread(self._jobs.set_priority, job_id, priority)
        return job, await self._executor.reprioritize(job_id, priority)

    async def find_by_key(self, key: str) -> list[JobRecord]:
        jobs = await asyncio.to_thread(self._jobs.find_by_key, key)
        if not jobs:
            raise NotFound(f"no job was created under idempotency key {key[:64]!r}", param="key")
        return jobs

    # --- re-embedding and compaction --------------------------------------------------------------
    async def schedule_reembed(self, operator: User, scope: ReembedScope, options: EmbeddingOptions,
                               at: datetime | None) -> list[JobRecord]:
        return await self._reembed.schedule(operator, scope, options, at)

    async def run_compactor(self) -> CompactionReport:
        return await asyncio.to_thread(self.compactor.run_once)

    # --- processes -------------------------------------------------------------------------------
    async def reset_breaker(self, provider: str) -> dict[str, Any]:
        """Reset the breaker here and in every worker process (Redis mode)."""
        state = self._embeddings.reset_circuit_breaker(provider)
        await self._executor.broadcast_breaker_reset(provider)
        return state

    async def clear_cache(self) -> int:
        return await self._embeddings.clear_cache()

