"""Media embeddings (the logic behind `media_embeddings.py`): start a job for a media item (with
validated chunking options and an authorized model), skip unchanged content, report status,
delete a media item's vectors, batch starts, job reads/cancel, and the caller's tier usage
(each job carries its user's tier limits: daily chunk quota, concurrent-job cap). Jobs run in the job manager.

Imports core stores and services only; never FastAPI. Synchronous store calls go to a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tldw_Server_API.app.core.AuthNZ.api_keys import User
from tldw_Server_API.app.core.Chunking import Chunk
from tldw_Server_API.app.core.config import ChunkingDefaults, TierLimits
from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDBFactory, MediaRecord
from tldw_Server_API.app.core.Embeddings.chunk_windows import resolve_chunking
from tldw_Server_API.app.core.Embeddings.embedding_service import EmbeddingService
from tldw_Server_API.app.core.Embeddings.job_manager import JobSpec, MediaEmbeddingJobManager
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobRecord, JobStatus, day_start
from tldw_Server_API.app.core.Embeddings.queue_schemas import ChunkOptions
from tldw_Server_API.app.core.Embeddings.stage_context import media_collection, media_collections
from tldw_Server_API.app.core.Embeddings.worker_config import STAGE_ACTIONS, STAGES
from tldw_Server_API.app.core.Embeddings.workers import chunking_worker
from tldw_Server_API.app.core.errors import InvalidInput, NotFound, Overloaded, TLDWError
from tldw_Server_API.app.core.RAG.vector_stores.factory import VectorStoreFactory

MAX_BATCH_MEDIA = 1000


@dataclass(frozen=True)
class EmbeddingOptions:
    """What a caller may choose per job; None falls back to the configured defaults."""

    embedding_model: str | None = None
    embedding_provider: str | None = None
    chunk_size: int | None = None
    chunk_overlap: int | None = None
    chunk_method: str | None = None
    force_regenerate: bool = False
    priority: str = "normal"


@dataclass(frozen=True)
class StartResult:
    job: JobRecord
    skipped: bool          # unchanged content already embedded with this model: no new job


class MediaEmbeddingService:
    def __init__(
        self, embeddings: EmbeddingService, media_dbs: MediaDBFactory, vector_stores: VectorStoreFactory,
        manager: MediaEmbeddingJobManager, chunking: ChunkingDefaults,
        tiers: Mapping[str, TierLimits] | None = None, skip_unchanged: bool = True,
    ) -> None:
        self._embeddings = embeddings
        self._skip_unchanged = skip_unchanged
        self._media_dbs = media_dbs
        self._vector_stores = vector_stores
        self.manager = manager
        self._chunking = chunking
        self._tiers = dict(tiers or {})

    def limits(self, user: User) -> TierLimits:
        """The user's tier allowance (no limits for a tier not configured)."""
        return self._tiers.get(user.tier, TierLimits())

    async def usage(self, user: User) -> dict[str, Any]:
        """The caller's tier, its limits, and what today (UTC) and now take of them."""
        limits = self.limits(user)
        jobs = self.manager.jobs
        used = await asyncio.to_thread(jobs.chunks_used_since, user.id, day_start(datetime.now(UTC)))
        active = await asyncio.to_thread(jobs.count_active, user.id)
        return {"object": "embedding.usage", "tier": user.tier, "daily_chunk_quota": limits.daily_chunks or None,
                "chunks_used_today": used, "concurrent_jobs_limit": limits.concurrent_jobs or None,
                "active_jobs": active}

    def _model_name(self, options: EmbeddingOptions) -> str | None:
        if options.embedding_provider and options.embedding_model and ":" not in options.embedding_model:
            return f"{options.embedding_provider}:{options.embedding_model}"
        if options.embedding_provider and not options.embedding_model:   # that provider's default model
            registry = self._embeddings.registry
            return f"{options.embedding_provider}:{registry.default_models_for(options.embedding_provider)[0]}"
        return options.embedding_model

    async def prepare(self, user: User, options: EmbeddingOptions) -> tuple[str, str, ChunkOptions]:
        """Validate everything a job needs before anything is written: (provider, model, chunking),
        the chunking sized for that model's window."""
        if options.priority not in ("high", "normal", "low"):
            raise InvalidInput("priority must be high, normal or low", param="priority")
        provider, model_id, _ = self._embeddings.authorize(self._model_name(options), user)
        model = f"{provider}:{model_id}"
        window = await asyncio.to_thread(self._embeddings.window, model)
        chosen = resolve_chunking(options.chunk_method, options.chunk_size, options.chunk_overlap, self._chunking,
                                  window, model)
        chunking = ChunkOptions.model_validate({"method": chosen.method, "size": chosen.max_size,
                                                "overlap": chosen.overlap, "max_chunks": chosen.max_chunks})
        return provider, model_id, chunking

    def chunk(self, content: str, page_starts: Sequence[int] | None, provider: str, model_id: str,
              chunking: ChunkOptions) -> list[Chunk]:
        """Chunks of a text exactly as a job for (provider, model) will cut them: the media's FTS
        chunks before its job runs. Synchronous (a tokenizer may load): run off the event loop."""
        return chunking_worker.cut(content, page_starts, chunking, provider, model_id, self._embeddings.tokenizer_for)

    async def start(self, user: User, media_id: int, options: EmbeddingOptions) -> StartResult:
        provider, model_id, chunking = await self.prepare(user, options)
        media = await self._media(user, media_id)
        return await self._submit(user, media, provider, model_id, chunking, options)

    async def _submit(self, user: User, media: MediaRecord, provider: str, model_id: str, chunking: ChunkOptions,
                      options: EmbeddingOptions, *, operator: bool = False,
                      not_before: datetime | None = None) -> StartResult:
        """A job for the media unless an equal one is done or on its way. `operator`: an admin's
        re-embed: always a new job, no tier limits; unchanged chunks still reuse their vectors."""
        if not options.force_regenerate and not operator:
            latest = self.manager.jobs.latest_job_for_media(user.id, media.id)
            if latest is not None and _same_result(latest, media.content_hash, provider, model_id, chunking):
                if latest.status != JobStatus.COMPLETED:
                    return StartResult(latest, skipped=False)     # the same job is already on its way
                if await self._stored_count(user.id, media.id, model_id):   # not deleted since
                    return StartResult(latest, skipped=True)
        limits = TierLimits() if operator else self.limits(user)
        spec = JobSpec(user.id, media.id, media.title, media.content_hash, provider, model_id, chunking,
                       options.priority, daily_chunk_quota=limits.daily_chunks,
                       max_active_jobs=limits.concurrent_jobs,
                       reuse_unchanged=self._skip_unchanged and not options.force_regenerate, not_before=not_before)
        return StartResult(await self.manager.submit(spec, media.content, media.page_starts), skipped=False)

    async def reembed(self, operator: User, user_id: str, media_ids: Sequence[int], options: EmbeddingOptions,
                      at: datetime | None = None) -> list[JobRecord]:
        """An operator's re-embed of some of a user's media (the model checked against the policy
        as the operator): one new job each, started now or at `at`."""
        target = User(user_id, roles=operator.roles, tier=operator.tier)
        provider, model_id, chunking = await self.prepare(target, options)
        jobs = []
        for media_id in media_ids:
            media = await self._media(target, media_id)
            result = await self._submit(target, media, provider, model_id, chunking, options, operator=True,
                                        not_before=at)
            jobs.append(result.job)
        return jobs

    async def _media(self, user: User, media_id: int) -> MediaRecord:
        db = self._media_dbs.get(user.id)
        return await asyncio.to_thread(db.get_media, media_id)

    async def start_batch(self, user: User, media_ids: list[int], options: EmbeddingOptions) -> dict[str, Any]:
        if not media_ids or len(media_ids) > MAX_BATCH_MEDIA:
            raise InvalidInput(f"media_ids must hold 1-{MAX_BATCH_MEDIA} ids", param="media_ids")
        provider, model_id, chunking = await self.prepare(user, options)
        accepted: list[dict[str, Any]] = []
        rejected: list[dict[str, Any]] = []
        errors: list[TLDWError] = []
        for media_id in dict.fromkeys(media_ids):
            try:
                media = await self._media(user, media_id)
                result = await self._submit(user, media, provider, model_id, chunking, options)
            except (TLDWError, Overloaded) as exc:
                rejected.append({"media_id": media_id, "reason": exc.message, "code": exc.code})
                errors.append(exc)
                continue
            accepted.append({"media_id": media_id, "job_id": result.job.job_id, "skipped": result.skipped})
        if not accepted:   # nothing started: an error, not a 202 (the first reason, or "none exist")
            if all(isinstance(e, NotFound) for e in errors):
                raise NotFound(f"none of the {len(errors)} media ids exist", param="media_ids")
            raise errors[0]
        return {"status": "accepted" if not rejected else "partial", "accepted": accepted, "rejected": rejected}

    async def _stored_count(self, user_id: str, media_id: int, model_id: str) -> int:
        store = self._vector_stores.for_user(user_id)
        name = media_collection(user_id, model_id, self._embeddings.registry.default_model_id)
        return await asyncio.to_thread(store.count, name, {"media_id": media_id})

    async def status(self, user: User, media_id: int) -> dict[str, Any]:
        media = await self._media(user, media_id)
        latest = self.manager.jobs.latest_job_for_media(user.id, media_id)
        # The vectors are those of the last *completed* job: a failed or running re-embed (maybe
        # with another model) has not replaced them.
        done, _ = self.manager.jobs.list_jobs(user.id, JobStatus.COMPLETED, 1, 0, media_id=media_id)
        source = done[0] if done else latest
        model = source.embedding_model if source else None
        count = await self._stored_count(user.id, media_id, model) if model else 0
        return {
            "media_id": media.id, "has_embeddings": count > 0, "chunk_count": count,
            "content_hash": media.content_hash, "embedding_model": model,
            "embedding_provider": source.embedding_provider if source else None,
            "job": latest,
        }

    async def delete_embeddings(self, user: User, media_id: int) -> int:
        await self._media(user, media_id)
        return await self.purge_vectors(user.id, media_id)

    async def purge_vectors(self, user_id: str, media_id: int) -> int:
        """Remove a media item's chunks from every media collection of the user."""
        store = self._vector_stores.for_user(user_id)

        def purge() -> int:
            names = media_collections(user_id, store.list_collections())
            return sum(store.delete_where(name, {"media_id": media_id}) for name in names)

        return await asyncio.to_thread(purge)

    async def control_stage(self, stage: str, action: str) -> dict[str, Any]:
        """Admin: pause, drain or resume a pipeline stage (whichever executor runs it)."""
        if stage not in STAGES:
            raise InvalidInput(f"stage must be one of {', '.join(STAGES)}", param="stage")
        if action not in STAGE_ACTIONS:
            raise InvalidInput(f"action must be one of {', '.join(STAGE_ACTIONS)}", param="action")
        state = await self.manager.executor.control(stage, action)
        return {"object": "pipeline.stage", "stage": stage, "state": state}

    async def pipeline_summary(self) -> dict[str, Any]:
        """The executor's view for operators (admin): mode, per-stage lag, pending, DLQ, workers."""
        return await self.manager.executor.summary()

    def get_job(self, user: User, job_id: str) -> JobRecord:
        return self.manager.jobs.get_job(user.id, job_id)

    def list_jobs(self, user: User, status: str | None, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        if status is not None and status not in {s.value for s in JobStatus}:
            raise InvalidInput(f"unknown job status '{status}'", param="status")
        return self.manager.jobs.list_jobs(user.id, JobStatus(status) if status else None, limit, offset)

    def cancel_job(self, user: User, job_id: str) -> JobRecord:
        return self.manager.jobs.cancel(user.id, job_id)


def _same_result(job: JobRecord, content_hash: str, provider: str, model_id: str, chunking: ChunkOptions) -> bool:
    if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        return False
    return (job.content_hash, job.embedding_provider, job.embedding_model, job.chunk_method, job.chunk_size,
            job.chunk_overlap) == (content_hash, provider, model_id, chunking.method, chunking.size, chunking.overlap)
