"""`StrictJSONRoute`: the route class of every v1 router. Its requests decode JSON bodies with the
core's one wire rule (`core/wire.loads_json`) instead of the standard library's lenient decoder,
so no route can receive a lone surrogate, NaN or Infinity; a body that fails is FastAPI's usual
`json_invalid` validation error, which the shared error table renders as an OpenAI 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from tldw_Server_API.app.api.v1 import API_V1_PREFIX
from tldw_Server_API.app.core.wire import loads_json


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler


def v1_router(tag: str) -> APIRouter:
    """A router for /api/v1 routes: the prefix on each route's own path (so logs and metrics
    report the full template) and the strict JSON rule."""
    return APIRouter(prefix=API_V1_PREFIX, tags=[tag], route_class=StrictJSONRoute)
