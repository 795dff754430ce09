"""Probes for people and orchestrators, outside /api/v1 and without a key: `GET /health` (the
report: 503 with `status: loading` while the start-up models warm up, then 200 `healthy` or
`degraded`), `GET /health/live` (the process answers) and `GET /health/ready` (models warm and
every component the requests need answers: 200, else 503 in OpenAI's error shape naming why).
The same report is `/api/v1/embeddings/health`.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from tldw_Server_API.app.api.v1.deps import HealthServiceDep
from tldw_Server_API.app.api.v1.routing import StrictJSONRoute
from tldw_Server_API.app.api.v1.schemas.embeddings import HealthResponse, Liveness, Readiness

router = APIRouter(tags=["operations"], route_class=StrictJSONRoute)


@router.get("/health", response_model=HealthResponse, responses={503: {"description": "models still loading"}})
async def health(service: HealthServiceDep) -> JSONResponse:
    report = HealthResponse(**await service.report())
    return JSONResponse(report.model_dump(mode="json"), status_code=503 if report.status == "loading" else 200,
                        headers={"Retry-After": "2"} if report.status == "loading" else None)


@router.get("/health/live", response_model=Liveness)
async def live() -> Liveness:
    return Liveness(status="alive")


@router.get("/health/ready", response_model=Readiness)
async def ready(service: HealthServiceDep) -> Readiness:
    return Readiness(**await service.ready())
