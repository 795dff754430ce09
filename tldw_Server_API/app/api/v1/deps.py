"""FastAPI dependencies: the services built in the lifespan, the authenticated user, admin gate,
and `AuditedAdmin`: the admin gate of every route that changes state, which appends one audit
event per call (who, the route's action name, the target from its path, the outcome: `ok` or
the error's code) once the handler has run, whatever it raised. A handler may add detail by
setting `request.state.audit_detail`.

All are `async def` on purpose: none blocks, and FastAPI runs a plain `def` dependency on its
worker-thread pool, a thread hop per dependency per request (~0.1-0.2 ms each). And each reads
what it needs from the request itself rather than through further dependencies: FastAPI solves
every node of the tree again per request (~15-40 us each on a small VM, the hot route's budget is
a few ms), so the key's two OpenAPI schemes are declared on the schema (`install_security`), not
as per-request `Security` dependencies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
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


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_services(request: Request) -> Services:
    return services_of(request)


ServicesDep = Annotated[Services, Depends(get_services)]


def _presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return x_api_key.strip() if x_api_key else None


async def get_current_user(request: Request) -> User:
    headers = request.headers
    user = services_of(request).auth.authenticate(_presented_key(headers.get("authorization"),
                                                                 headers.get("x-api-key")))
    request.state.user_id = user.id
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]

# The key's two ways in, for the OpenAPI schema (Swagger's Authorize button).
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer <key>`."},
    "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-KEY",
                     "description": "The same key in `X-API-KEY`."},
}


_SELF_AUTHENTICATING: set[Callable[..., Any]] = set()


def authenticates_itself(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Mark an endpoint that calls `get_current_user` itself rather than through a dependency
    (the hot route), so the schema declares the key for it as for the others."""
    _SELF_AUTHENTICATING.add(endpoint)
    return endpoint


def _needs_key(dependant: Dependant) -> bool:
    return any(d.call is get_current_user or _needs_key(d) for d in dependant.dependencies)


def _api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """Every APIRoute of the app, through included routers (FastAPI keeps those as branches
    holding their `original_router`; each v1 route carries its full path already)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _api_routes(route.original_router.routes)


def install_security(app: FastAPI) -> None:
    """Declare `SECURITY_SCHEMES` in the app's OpenAPI schema, and both on every operation whose
    dependencies authenticate (`get_current_user`, directly or through the admin gates)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            spec.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            for route in _api_routes(app.routes):
                if route.include_in_schema and (route.endpoint in _SELF_AUTHENTICATING
                                                or _needs_key(route.dependant)):
                    for method in route.methods:
                        operation = spec["paths"].get(route.path_format, {}).get(method.lower())
                        if operation is not None:
                            operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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


async def get_health_service(request: Request) -> HealthService:
    return services_of(request).health


HealthServiceDep = Annotated[HealthService, Depends(get_health_service)]


async def get_embedding_service(request: Request) -> EmbeddingService:
    return services_of(request).embeddings


EmbeddingServiceDep = Annotated[EmbeddingService, Depends(get_embedding_service)]


async def get_media_service(request: Request) -> MediaService:
    return services_of(request).media


MediaServiceDep = Annotated[MediaService, Depends(get_media_service)]


async def get_media_embedding_service(request: Request) -> MediaEmbeddingService:
    return services_of(request).media_embeddings


MediaEmbeddingServiceDep = Annotated[MediaEmbeddingService, Depends(get_media_embedding_service)]


async def get_rag_service(request: Request) -> RAGSearchService:
    return services_of(request).rag


RAGServiceDep = Annotated[RAGSearchService, Depends(get_rag_service)]


async def get_operations(request: Request) -> PipelineOperations:
    return services_of(request).operations


OperationsDep = Annotated[PipelineOperations, Depends(get_operations)]


async def get_audit_log(request: Request) -> AuditLog:
    return services_of(request).audit


AuditLogDep = Annotated[AuditLog, Depends(get_audit_log)]


async def get_file_service(request: Request) -> FileService:
    return services_of(request).files


FileServiceDep = Annotated[FileService, Depends(get_file_service)]


async def get_vector_store_files(request: Request) -> VectorStoreFileService:
    return services_of(request).vector_store_files


VectorStoreFilesDep = Annotated[VectorStoreFileService, Depends(get_vector_store_files)]


async def get_vector_store_service(request: Request) -> VectorStoreService:
    return services_of(request).vector_store_api


VectorStoreServiceDep = Annotated[VectorStoreService, Depends(get_vector_store_service)]
