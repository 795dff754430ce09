"""Builds every long-lived service from the settings, once, in the app's lifespan, and closes
them on shutdown. Endpoints reach them through dependencies reading `app.state.services`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from loguru import logger
from prometheus_client import CollectorRegistry

from tldw_Server_API.app.core.AuthNZ.api_keys import APIKeyStore, load_key_store
from tldw_Server_API.app.core.Chunking import ExtractionLimits
from tldw_Server_API.app.core.config import Settings
from tldw_Server_API.app.core.Embeddings.audit_adapter import AuditLog
from tldw_Server_API.app.core.Embeddings.circuit_breaker import BreakerRegistry
from tldw_Server_API.app.core.Embeddings.dead_letters import DeadLetterQueue
from tldw_Server_API.app.core.Embeddings.embedding_execution import HopExecutor
from tldw_Server_API.app.core.Embeddings.embedding_service import EmbeddingService
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import create_provider_registry
from tldw_Server_API.app.core.Embeddings.job_manager import MediaEmbeddingJobManager
from tldw_Server_API.app.core.Embeddings.media_embedding_service import MediaEmbeddingService
from tldw_Server_API.app.core.Embeddings.metrics_integration import EmbeddingsMetrics
from tldw_Server_API.app.core.Embeddings.multi_tier_cache import create_embedding_cache
from tldw_Server_API.app.core.Embeddings.pipeline_executor import EmbeddedExecutor, PipelineExecutor
from tldw_Server_API.app.core.Embeddings.policy import EmbeddingPolicy
from tldw_Server_API.app.core.Embeddings.rate_limiter import create_rate_limiter
from tldw_Server_API.app.core.Embeddings.services.pipeline_operations import PipelineOperations
from tldw_Server_API.app.core.Embeddings.services.reembed_consumer import ReembedConsumer
from tldw_Server_API.app.core.Embeddings.services.reembed_worker import ReembedWorker
from tldw_Server_API.app.core.Embeddings.services.vector_compactor import VectorCompactor
from tldw_Server_API.app.core.Embeddings.stage_context import MediaQueryEmbedder, ServiceEmbedder, StageContext
from tldw_Server_API.app.core.Embeddings.tokenization import TokenArrayDecoder
from tldw_Server_API.app.core.Embeddings.vector_store_files import VectorStoreFileService
from tldw_Server_API.app.core.Embeddings.vector_store_service import VectorStoreService
from tldw_Server_API.app.core.Embeddings.worker_config import crypto_of
from tldw_Server_API.app.core.Embeddings.workers.redis_executor import RedisExecutor
from tldw_Server_API.app.core.Files.file_service import FileService
from tldw_Server_API.app.core.health import HealthService
from tldw_Server_API.app.core.Media.media_service import MediaService
from tldw_Server_API.app.core.observability import HTTPMetrics
from tldw_Server_API.app.core.periodic import run_periodically
from tldw_Server_API.app.core.RAG.search import RAGSearchService
from tldw_Server_API.app.core.storage import StorageServices, build_storage

REEMBED_POLL_SECONDS = 2.0
FILES_SWEEP_SECONDS = 600.0    # expired Files API files are refused at once and swept this often


@dataclass
class Services:
    settings: Settings
    metrics_registry: CollectorRegistry
    http_metrics: HTTPMetrics
    auth: APIKeyStore
    embeddings: EmbeddingService
    storage: StorageServices
    vector_store_api: VectorStoreService
    media_embeddings: MediaEmbeddingService
    media: MediaService
    rag: RAGSearchService
    health: HealthService
    audit: AuditLog
    operations: PipelineOperations
    loops: BackgroundLoops
    files: FileService
    vector_store_files: VectorStoreFileService

    async def aclose(self) -> None:
        await self.loops.aclose()
        await self.health.aclose()
        await self.vector_store_api.aclose()
        await self.media_embeddings.manager.aclose()
        await self.embeddings.aclose()
        self.storage.close()


async def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    auth = load_key_store(settings.auth_config())
    logger.info("auth: {}", auth.source)
    embeddings = build_embedding_service(settings, registry)
    warming = asyncio.create_task(embeddings.preload(settings.engine_config().models.preload), name="preload")
    storage = build_storage(settings)
    vector_store_api = VectorStoreService(embeddings, storage, settings.storage_config().chunking)
    media_embeddings, rag = build_media_services(settings, embeddings, storage)
    await media_embeddings.manager.start()
    await vector_store_api.start()
    storage_config = settings.storage_config()
    media = MediaService(storage.media_dbs, media_embeddings, storage_config.max_upload_bytes,
                         storage_config.user_quota_bytes,
                         ExtractionLimits(storage_config.max_pages, storage_config.max_unpacked_bytes))
    health = HealthService(embeddings, storage.vector_stores, storage.jobs.engine, settings.redis_url,
                           warming=warming)
    executor = media_embeddings.manager.executor
    dlq = None
    if isinstance(executor, RedisExecutor):
        dlq = DeadLetterQueue(executor.redis, executor.names, crypto_of(settings.pipeline_config()))
    compactor = VectorCompactor(storage.media_dbs, storage.vector_stores)
    operations = PipelineOperations(storage.jobs, executor, embeddings, dlq,
                                    ReembedWorker(media_embeddings, storage.media_dbs, storage.vector_store_files),
                                    compactor)
    loops = BackgroundLoops()
    loops.start("re-embed consumer", ReembedConsumer(media_embeddings.manager).run_forever, REEMBED_POLL_SECONDS)
    if settings.embeddings_compactor_interval_seconds > 0:
        loops.start("vector compactor", compactor.run_forever, settings.embeddings_compactor_interval_seconds)
    loops.start("expired files", loops.every(storage.files.purge_expired), FILES_SWEEP_SECONDS)
    return Services(settings, registry, HTTPMetrics(registry), auth, embeddings, storage, vector_store_api,
                    media_embeddings, media, rag, health, AuditLog(storage_config.jobs_db_url), operations, loops,
                    FileService(storage.files),
                    VectorStoreFileService(vector_store_api, storage.files, storage.vector_store_files, media,
                                           media_embeddings, embeddings, storage.vector_stores))


class BackgroundLoops:
    """The server's periodic loops (`run_forever(interval, stop)` each), stopped together."""

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, run: Callable[[float, asyncio.Event], Coroutine[Any, Any, None]],
              interval: float) -> None:
        self._tasks.append(asyncio.create_task(run(interval, self._stop), name=name))

    @staticmethod
    def every(work: Callable[[], object]) -> Callable[[float, asyncio.Event], Coroutine[Any, Any, None]]:
        """A loop running the blocking `work` in a thread now and every interval; a failure is
        logged and the loop goes on."""
        async def run(interval: float, stop: asyncio.Event) -> None:
            await run_periodically(lambda: asyncio.to_thread(work), interval, stop,
                                   name=getattr(work, "__name__", "work"))
        return run

    async def aclose(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)


def build_media_services(
    settings: Settings, embeddings: EmbeddingService, storage: StorageServices
) -> tuple[MediaEmbeddingService, RAGSearchService]:
    """The embedded pipeline (stage handlers run by the in-process job manager) and RAG search."""
    config = settings.storage_config()
    default_provider, default_model = embeddings.resolve_model(None)

    pipeline = settings.pipeline_config()
    executor: PipelineExecutor
    if pipeline.mode == "redis":
        import redis.asyncio as aioredis

        check_shared_state(settings)
        executor = RedisExecutor(aioredis.Redis.from_url(pipeline.redis_url), pipeline, storage.jobs,
                                 storage.media_dbs)
    else:
        executor = EmbeddedExecutor(stage_context(embeddings, storage, default_model),
                                    concurrency=config.pipeline_concurrency, queue_size=config.pipeline_queue_size,
                                    max_retries=pipeline.max_retries)
    manager = MediaEmbeddingJobManager(storage.jobs, executor)
    service = MediaEmbeddingService(embeddings, storage.media_dbs, storage.vector_stores, manager, config.chunking,
                                    tiers=settings.tier_limits(), skip_unchanged=settings.reembed_skip_unchanged)
    return service, RAGSearchService(storage.media_dbs, storage.vector_stores,
                                     MediaQueryEmbedder(embeddings, default_model, default_provider))



def stage_context(embeddings: EmbeddingService, storage: StorageServices, default_model: str) -> StageContext:
    """What the stage handlers run with, in the server (embedded) or a worker process (Redis)."""
    return StageContext(storage.media_dbs, storage.vector_stores, ServiceEmbedder(embeddings), storage.jobs,
                        default_model=default_model, tokenizer_for=embeddings.tokenizer_for,
                        reset_breaker=embeddings.reset_circuit_breaker)


def check_shared_state(settings: Settings) -> None:
    """Redis mode runs the stages in other processes, maybe on other machines: the vector store
    must be a service every process reaches (pgvector or a Chroma server). Embedded Chroma (or the
    in-memory stub) is refused."""
    config = settings.storage_config()
    if config.vector_store_type == "pgvector" or (config.chroma_url and not config.chroma_force_stub):
        return
    raise RuntimeError("EMBEDDINGS_PIPELINE=redis runs the stages in worker processes that must share the "
                       "vector store: set RAG__VECTOR_STORE_TYPE=pgvector and RAG__PGVECTOR__DSN (recommended), "
                       "or RAG__CHROMA__URL to a Chroma server (embedded Chroma is one process's files)")


async def build_worker_context(settings: Settings, *, preload: bool = True
                               ) -> tuple[StageContext, Callable[[], Awaitable[None]]]:
    """A worker process's stage context and the coroutine that closes what it opened (`preload`:
    load the configured models now; chunking and storage workers only need a tokenizer)."""
    check_shared_state(settings)
    embeddings = build_embedding_service(settings, CollectorRegistry())
    if preload:
        await embeddings.preload(settings.engine_config().models.preload)
    storage = build_storage(settings)
    _, default_model = embeddings.resolve_model(None)

    async def close() -> None:
        await embeddings.aclose()
        storage.close()

    return stage_context(embeddings, storage, default_model), close


def build_embedding_service(settings: Settings, registry: CollectorRegistry) -> EmbeddingService:
    resilience = settings.resilience_config()
    metrics = EmbeddingsMetrics(registry)
    cache = create_embedding_cache(resilience.cache) if resilience.cache.enabled else None
    if cache is not None:
        cache.start()
    limiter = create_rate_limiter(resilience.rate_limit) if resilience.rate_limit.enabled else None
    breakers = BreakerRegistry(resilience.breaker)
    breakers.on_state_change = metrics.on_breaker_change
    executor = HopExecutor(
        settings.embeddings_api_config(),
        TokenArrayDecoder(settings.tiktoken_cache_dir),
        metrics,
        breakers,
        resilience.retry,
        cache,
        limiter,
    )
    return EmbeddingService(
        create_provider_registry(settings.engine_config()),
        settings.embeddings_api_config(),
        executor,
        EmbeddingPolicy(resilience.policy),
        metrics,
    )
