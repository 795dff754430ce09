"""Builds every long-lived service from the settings, once, in the app's lifespan, and closes
them on shutdown. Endpoints reach them through dependencies reading `app.state.services`.
"""

from __future__ import annotations

from dataclasses import dataclass

from loguru import logger
from prometheus_client import CollectorRegistry

from tldw_Server_API.app.core.AuthNZ.api_keys import APIKeyStore, load_key_store
from tldw_Server_API.app.core.config import Settings
from tldw_Server_API.app.core.Embeddings.embedding_service import EmbeddingService
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import create_provider_registry
from tldw_Server_API.app.core.Embeddings.metrics_integration import EmbeddingsMetrics
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
        await self.embeddings.registry.aclose()


async def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    auth = load_key_store(settings.auth_config())
    logger.info("auth: {}", auth.source)
    providers = create_provider_registry(settings.engine_config())
    embeddings = EmbeddingService(
        providers,
        settings.embeddings_api_config(),
        TokenArrayDecoder(settings.tiktoken_cache_dir),
        EmbeddingsMetrics(registry),
    )
    return Services(settings, registry, HTTPMetrics(registry), auth, embeddings)
