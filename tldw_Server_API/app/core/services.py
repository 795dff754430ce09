"""Builds every long-lived service from the settings, once, in the app's lifespan, and closes
them on shutdown. Endpoints reach them through dependencies reading `app.state.services`.
"""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger
from prometheus_client import CollectorRegistry

from tldw_Server_API.app.core.AuthNZ.api_keys import APIKeyStore, load_key_store
from tldw_Server_API.app.core.config import Settings
from tldw_Server_API.app.core.Embeddings.circuit_breaker import BreakerRegistry
from tldw_Server_API.app.core.Embeddings.embedding_execution import HopExecutor
from tldw_Server_API.app.core.Embeddings.embedding_service import EmbeddingService
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import create_provider_registry
from tldw_Server_API.app.core.Embeddings.metrics_integration import EmbeddingsMetrics
from tldw_Server_API.app.core.Embeddings.multi_tier_cache import create_embedding_cache
from tldw_Server_API.app.core.Embeddings.policy import EmbeddingPolicy
from tldw_Server_API.app.core.Embeddings.rate_limiter import create_rate_limiter
from tldw_Server_API.app.core.Embeddings.tokenization import TokenArrayDecoder
from tldw_Server_API.app.core.observability import HTTPMetrics


@dataclass
class Services:
    settings: Settings
    metrics_registry: CollectorRegistry
    http_metrics: HTTPMetrics
    auth: APIKeyStore
    embeddings: EmbeddingService

    async def aclose(self) -> None:
        await self.embeddings.aclose()


async def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    auth = load_key_store(settings.auth_config())
    logger.info("auth: {}", auth.source)
    embeddings = build_embedding_service(settings, registry)
    await embeddings.preload(settings.engine_config().models.preload)
    return Services(settings, registry, HTTPMetrics(registry), auth, embeddings)


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
