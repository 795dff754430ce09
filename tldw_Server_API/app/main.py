"""Host app factory: `create_app(settings)` wires middleware, error handlers and routers; its
lifespan builds the services once and closes them on shutdown. `app` is the module-level instance
for `uvicorn tldw_Server_API.app.main:app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from loguru import logger

from tldw_Server_API.app.api.admin_console import router as admin_console_router
from tldw_Server_API.app.api.docs import install_docs
from tldw_Server_API.app.api.health import router as health_router
from tldw_Server_API.app.api.metrics import router as metrics_router
from tldw_Server_API.app.api.middleware import OpenAIBasePathMiddleware, RequestContextMiddleware
from tldw_Server_API.app.api.v1 import API_V1_PREFIX
from tldw_Server_API.app.api.v1.deps import install_security
from tldw_Server_API.app.api.v1.endpoints.embeddings_operations import router as operations_router
from tldw_Server_API.app.api.v1.endpoints.embeddings_v5_production_enhanced import router as embeddings_router
from tldw_Server_API.app.api.v1.endpoints.files_openai import router as files_router
from tldw_Server_API.app.api.v1.endpoints.media import router as media_router
from tldw_Server_API.app.api.v1.endpoints.media_embeddings import router as media_embeddings_router
from tldw_Server_API.app.api.v1.endpoints.rag import router as rag_router
from tldw_Server_API.app.api.v1.endpoints.vector_store_files_openai import router as vector_store_files_router
from tldw_Server_API.app.api.v1.endpoints.vector_stores_openai import router as vector_stores_router
from tldw_Server_API.app.api.v1.errors import install_error_handlers
from tldw_Server_API.app.api.v1.examples import install_examples
from tldw_Server_API.app.core.config import Settings, apply_library_defaults
from tldw_Server_API.app.core.observability import configure_logging
from tldw_Server_API.app.core.services import Services, build_services
from tldw_Server_API.app.core.tracing import configure_tracing


def startup_summary(settings: Settings, services: Services) -> list[str]:
    """What a newcomer needs to see at start: where data goes, which stores and pipeline run,
    which models, where the docs are and where the key is (never the key)."""
    storage, pipeline = settings.storage_config(), settings.pipeline_config()
    store = storage.vector_store_type
    if store == "pgvector":
        store += " (RAG__PGVECTOR__DSN)"
    elif storage.chroma_url:
        store += f" server {storage.chroma_url}"
    else:
        store += f" embedded under {storage.data_dir}"
    models = settings.engine_config().models
    base = f"http://{settings.tldw_host}:{settings.tldw_port}"
    return [
        f"data dir:      {storage.data_dir.resolve()}",
        f"vector store:  {store}",
        f"pipeline:      {pipeline.mode}" + (f" (Redis {pipeline.redis_url.split('@')[-1]})"
                                             if pipeline.mode == "redis" else ""),
        f"models:        default {settings.embeddings_default_model}; warming at start: "
        f"{', '.join(models.preload) or 'none (loaded on first use)'} (GET /health says loading until ready)",
        f"API docs:      {base}/docs   OpenAI base URL: {base}/v1",
        f"API key:       {services.auth.source}",
    ]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.logging_config())
    apply_library_defaults()
    configure_tracing(settings.otel_exporter_otlp_endpoint)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await build_services(settings)
        app.state.services = services
        for line in startup_summary(settings, services):
            logger.info(line)
        try:
            yield
        finally:
            await services.aclose()

    app = FastAPI(title="tldw_server embeddings", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_docs(app)
    install_examples(app)
    install_security(app)
    upload_cap = settings.storage_config().max_upload_bytes + 256 * 1024   # file + multipart envelope
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_request_bytes,
                       path_limits={f"{API_V1_PREFIX}/media/add": max(upload_cap, settings.max_request_bytes),
                                    f"{API_V1_PREFIX}/files": max(settings.files_max_bytes + 64 * 1024,
                                                                  settings.max_request_bytes)})
    app.add_middleware(OpenAIBasePathMiddleware)   # outermost: /v1 paths are /api/v1 paths from here on
    install_error_handlers(app)
    app.include_router(embeddings_router)
    app.include_router(vector_stores_router)
    app.include_router(media_router)
    app.include_router(media_embeddings_router)
    app.include_router(operations_router)
    app.include_router(files_router)
    app.include_router(vector_store_files_router)
    app.include_router(rag_router)
    app.include_router(metrics_router)
    app.include_router(health_router)
    app.include_router(admin_console_router)
    return app


app = create_app()
