"""The one translation point from domain errors to HTTP: a status + OpenAI error type per class,
and the handlers that give every error (validation and routing ones included) OpenAI's shape
`{"error": {"message", "type", "param", "code"}}`. Every endpoint module relies on this table.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tldw_Server_API.app.core.Embeddings.dlq_crypto import DLQDecryptError
from tldw_Server_API.app.core.Embeddings.rate_limiter import RateLimitExceeded
from tldw_Server_API.app.core.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ProviderError,
    ProviderNotImplemented,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    TLDWError,
    UnsupportedMediaType,
)
from tldw_Server_API.app.core.errors import Overloaded as OverloadedError
from tldw_Server_API.app.core.Files.files_db import FileContentUnavailable
from tldw_Server_API.app.core.wire import json_error_message

# Looked up along the exception's MRO, so a subclass inherits its parent's row.
ERROR_TABLE: dict[type[TLDWError], tuple[int, str]] = {
    InvalidInput: (400, "invalid_request_error"),
    AuthenticationFailed: (401, "invalid_request_error"),
    PermissionDenied: (403, "permission_error"),
    NotFound: (404, "invalid_request_error"),
    Conflict: (409, "invalid_request_error"),
    PayloadTooLarge: (413, "invalid_request_error"),
    QuotaExceeded: (429, "insufficient_quota"),
    UnsupportedMediaType: (415, "invalid_request_error"),
    RateLimited: (429, "rate_limit_error"),
    OverloadedError: (429, "rate_limit_error"),
    ProviderNotImplemented: (501, "invalid_request_error"),
    ProviderError: (502, "api_error"),
    ServiceUnavailable: (503, "server_error"),
    FileContentUnavailable: (500, "server_error"),
    DLQDecryptError: (409, "invalid_request_error"),   # a key rotated out or a tampered entry: not ours to fix
}

_STATUS_DEFAULTS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def error_payload(message: str, err_type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def error_response(
    status: int, message: str, err_type: str, code: str | None, param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = orjson.dumps(error_payload(message, err_type, code, param))
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def status_for(exc: TLDWError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]  # type: ignore[index]
    return 500, "server_error"


def domain_error_response(exc: TLDWError) -> Response:
    status, err_type = status_for(exc)
    headers = {}
    retry_after = getattr(exc, "retry_after", None)  # RetryableError, ProviderTransientError
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if isinstance(exc, RateLimitExceeded) and exc.decision.limit is not None:
        headers["X-RateLimit-Limit"] = str(exc.decision.limit)
        headers["X-RateLimit-Remaining"] = str(exc.decision.remaining or 0)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(status, exc.message, err_type, exc.code, exc.param, headers)


def internal_error_response(request_id: str) -> Response:
    return error_response(500, f"internal error (request id {request_id})", "server_error", "internal_error")


def _validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    loc = [str(part) for part in error.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header"):   # where it was, not what it is
        loc = loc[1:]
    kind = error.get("type", "")
    if kind == "json_invalid":
        return json_error_message(str((error.get("ctx") or {}).get("error", ""))), None
    if not loc:
        if kind == "missing":
            return "a JSON request body is required", None
        return "the request body must be a JSON object", None
    param = ".".join(loc)
    if kind == "missing":
        return f"'{param}' is required", param
    return f"invalid value for '{param}': {error.get('msg', 'invalid')}", param


async def _on_validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    message, param = _validation_message(errors[0] if errors else {})
    code = "missing_required_parameter" if errors and errors[0].get("type") == "missing" else "invalid_value"
    return error_response(400, message, "invalid_request_error", code, param)


async def _on_domain_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, TLDWError)
    return domain_error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, TLDWError):  # e.g. the body-size guard tripping while FastAPI reads
        return domain_error_response(exc.__cause__)
    err_type, code = _STATUS_DEFAULTS.get(exc.status_code, ("server_error", "http_error"))
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404 and message == "Not Found":   # no route: say what is served
        message = (f"Unknown path {request.method} {request.url.path[:200]}: the OpenAI API is served under /v1 "
                   "and /api/v1 (embeddings, models, files, vector_stores; e.g. a base URL of "
                   "http://<host>:<port>/v1), the rest of this server's API under /api/v1 (see /docs)")
    return error_response(exc.status_code, message, err_type, code, headers=dict(exc.headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(TLDWError, _on_domain_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
