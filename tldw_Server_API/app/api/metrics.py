"""`GET /metrics`: Prometheus text exposition of the app's registry (no auth, no secrets in it)."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from tldw_Server_API.app.api.v1.deps import ServicesDep
from tldw_Server_API.app.api.v1.routing import StrictJSONRoute

router = APIRouter(tags=["operations"], route_class=StrictJSONRoute)


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics_registry), media_type=CONTENT_TYPE_LATEST)
