"""Pure-ASGI middleware. The request context: request id (X-Request-ID in and out), a body-size
guard (413 before the body is read when Content-Length says so, or as soon as the stream passes
the cap), the one catch-all that turns an unexpected exception into a 500 with the request id
(the details go to the log only), one log line per request and the HTTP metrics. The OpenAI base
path: `/v1/<resource>` for the OpenAI-shaped resources is served by the very `/api/v1` routes
(same handlers, auth and errors), the base URL most tools assume.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any

from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tldw_Server_API.app.api.v1 import API_V1_PREFIX
from tldw_Server_API.app.api.v1.errors import domain_error_response, internal_error_response
from tldw_Server_API.app.core.errors import PayloadTooLarge
from tldw_Server_API.app.core.tracing import span

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


OPENAI_RESOURCES = ("embeddings", "models", "files", "vector_stores")
OPENAI_BASE = "/v1"


def openai_alias(path: str) -> str | None:
    """The `/api/v1` path a `/v1` OpenAI path is served by (None: not such a path)."""
    if not path.startswith(OPENAI_BASE + "/"):
        return None
    resource = path[len(OPENAI_BASE) + 1:].split("/", 1)[0]
    return API_V1_PREFIX + path[len(OPENAI_BASE):] if resource in OPENAI_RESOURCES else None


class OpenAIBasePathMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = openai_alias(scope.get("path", ""))
            if target is not None:
                scope = {**scope, "path": target, "raw_path": target.encode()}
        await self.app(scope, receive, send)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, path_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.path_limits = path_limits or {}   # exact path -> its own cap (file uploads)
        # A request without a usable X-Request-ID gets this process's random prefix and a counter:
        # 32 hex characters, unique across processes, without a getrandom() call per request.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)

    def _new_request_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):016x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else self._new_request_id()
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = {"code": 500, "sent": False}
        cap = self.path_limits.get(scope.get("path", ""), self.max_body_bytes)
        too_large = PayloadTooLarge(f"the request body is larger than {cap} bytes")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        received = 0

        async def guarded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise too_large
            return message

        with logger.contextualize(request_id=request_id), span("HTTP " + scope["method"], request_id=request_id,
                                                                **{"http.method": scope["method"]}) as current:
            try:
                length = _header(scope, b"content-length")
                if length and length.isdigit() and int(length) > cap:
                    await domain_error_response(too_large)(scope, receive, send_with_id)
                else:
                    await self.app(scope, guarded_receive, send_with_id)
            except PayloadTooLarge as exc:
                if not status["sent"]:
                    await domain_error_response(exc)(scope, receive, send_with_id)
            except Exception:
                logger.exception("unhandled error")
                if not status["sent"]:
                    await internal_error_response(request_id)(scope, receive, send_with_id)
            finally:
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                current.update_name(f"HTTP {scope['method']} {route}")   # FastAPI's own spans nest inside
                current.set_attribute("http.route", route)
                current.set_attribute("http.status_code", int(status["code"]))
                self._finish(scope, state, int(status["code"]), time.perf_counter() - started)

    @staticmethod
    def _finish(scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        if services is not None:
            services.http_metrics.observe(scope["method"], route, status, seconds)
        logger.info(
            "{} {} {} {:.1f}ms user={} inputs={} tokens={}{}",
            scope["method"], route, status, seconds * 1000, state.get("user_id", "-"),
            state.get("log_inputs", "-"), state.get("log_tokens", "-"),
            f" end_user={state['end_user']}" if state.get("end_user") else "",
        )
