"""Probes for orchestrators, outside /api/v1 and without a key: `GET /health/live` (the process
answers) and `GET /health/ready` (every component the requests need answers: 200, else 503 in
OpenAI's error shape naming the failing ones). The full report is `/api/v1/embeddings/health`.
"""

from __future__ import annotations

from fastapi import APIRouter

from tldw_Server_API.app.api.v1.deps import HealthServiceDep
from tldw_Server_API.app.api.v1.routing import StrictJSONRoute
from tldw_Server_API.app.api.v1.schemas.embeddings import Liveness, Readiness

router = APIRouter(tags=["operations"], route_class=StrictJSONRoute)


@router.get("/health/live", response_model=Liveness)
async def live() -> Liveness:
    return Liveness(status="alive")


@router.get("/health/ready", response_model=Readiness)
async def ready(service: HealthServiceDep) -> Readiness:
    return Readiness(**await service.ready())
