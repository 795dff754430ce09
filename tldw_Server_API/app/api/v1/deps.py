"""FastAPI dependencies: the services built in the lifespan, the authenticated user, admin gate,
and `AuditedAdmin`: the admin gate of every route that changes state, which appends one audit
event per call (who, the route's action name, the target from its path, the outcome: `ok` or
the error's code) once the handler has run, whatever it raised. A handler may add detail by
setting `request.state.audit_detail`.

All are `async def` on purpose: none blocks, and FastAPI runs a plain `def` dependency on its
worker-thread pool, a thread hop per dependency per request (~0.1-0.2 ms each).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from loguru import logger

from tldw_Server_API.app.core.AuthNZ.api_keys import User
from tldw_Server_API.app.core.Embeddings.audit_adapter import AuditLog
from tldw_Server_API.app.core.Embeddings.embedding_service import EmbeddingService
from tldw_Server_API.app.core.Embeddings.media_embedding_service import MediaEmbeddingService
from tldw_Server_API.app.core.Embeddings.services.pipeline_operations import PipelineOperations
from tldw_Server_API.app.core.Embeddings.vector_store_files import VectorStoreFileService
from tldw_Server_API.app.core.Embeddings.vector_store_service import VectorStoreService
from tldw_Server_API.app.core.errors import PermissionDenied
from tldw_Server_API.app.core.Files.file_service import FileService
from tldw_Server_API.app.core.health import HealthService
from tldw_Server_API.app.core.Media.media_service import MediaService
from tldw_Server_API.app.core.RAG.search import RAGSearchService
from tldw_Server_API.app.core.services import Services


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def _presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return x_api_key.strip() if x_api_key else None


# Declared for the OpenAPI schema (Swagger's Authorize button); the key itself is read below.
_BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
_API_KEY = APIKeyHeader(name="X-API-KEY", auto_error=False, description="The same key in `X-API-KEY`.")


async def get_current_user(
    request: Request,
    services: ServicesDep,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None,
    _key: Annotated[str | None, Security(_API_KEY)] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(alias="X-API-KEY", include_in_schema=False)] = None,
) -> User:
    user = services.auth.authenticate(_presented_key(authorization, x_api_key))
    request.state.user_id = user.id
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def require_admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise PermissionDenied("this route needs the admin role")
    return user


AdminUser = Annotated[User, Depends(require_admin)]


def _audit_action(request: Request) -> tuple[str, str]:
    """The route's name (`area.verb`, `{param}` filled from the path) and its target (the path
    parameters, `name=value` joined)."""
    route: Any = request.scope.get("route")
    params = {k: str(v) for k, v in request.path_params.items()}
    name = getattr(route, "name", None) or request.url.path
    try:
        name = name.format(**params)
    except (KeyError, IndexError, ValueError):
        pass
    return name, ",".join(f"{k}={v}" for k, v in params.items())


async def audited_admin(request: Request, user: AdminUser, services: ServicesDep) -> AsyncIterator[User]:
    action, target = _audit_action(request)
    outcome = "ok"
    try:
        yield user
    except BaseException as exc:
        outcome = getattr(exc, "code", None) or type(exc).__name__
        raise
    finally:
        detail = getattr(request.state, "audit_detail", None)
        try:
            await asyncio.to_thread(services.audit.record, user.id, action, target, outcome, detail)
        except Exception as exc:  # noqa: BLE001 - the action happened; a lost audit row is logged loudly
            logger.error("audit: could not record {} by {}: {}", action, user.id, exc)


AuditedAdmin = Annotated[User, Depends(audited_admin)]


async def get_health_service(services: ServicesDep) -> HealthService:
    return services.health


HealthServiceDep = Annotated[HealthService, Depends(get_health_service)]


async def get_embedding_service(services: ServicesDep) -> EmbeddingService:
    return services.embeddings


EmbeddingServiceDep = Annotated[EmbeddingService, Depends(get_embedding_service)]


async def get_media_service(services: ServicesDep) -> MediaService:
    return services.media


MediaServiceDep = Annotated[MediaService, Depends(get_media_service)]


async def get_media_embedding_service(services: ServicesDep) -> MediaEmbeddingService:
    return services.media_embeddings


MediaEmbeddingServiceDep = Annotated[MediaEmbeddingService, Depends(get_media_embedding_service)]


async def get_rag_service(services: ServicesDep) -> RAGSearchService:
    return services.rag


RAGServiceDep = Annotated[RAGSearchService, Depends(get_rag_service)]


async def get_operations(services: ServicesDep) -> PipelineOperations:
    return services.operations


OperationsDep = Annotated[PipelineOperations, Depends(get_operations)]


async def get_audit_log(services: ServicesDep) -> AuditLog:
    return services.audit


AuditLogDep = Annotated[AuditLog, Depends(get_audit_log)]


async def get_file_service(services: ServicesDep) -> FileService:
    return services.files


FileServiceDep = Annotated[FileService, Depends(get_file_service)]


async def get_vector_store_files(services: ServicesDep) -> VectorStoreFileService:
    return services.vector_store_files


VectorStoreFilesDep = Annotated[VectorStoreFileService, Depends(get_vector_store_files)]


async def get_vector_store_service(services: ServicesDep) -> VectorStoreService:
    return services.vector_store_api


VectorStoreServiceDep = Annotated[VectorStoreService, Depends(get_vector_store_service)]
