"""Health of the components requests depend on: the vector store, the jobs DB and, when one is
configured, Redis. Each probe runs off the event loop and is bounded by a timeout, so an
unreachable service makes health `degraded` quickly instead of hanging it. Readiness
(`/health/ready`) is "the start-up models are warm and every component ok"; liveness
(`/health/live`) is "the process answers"; `/health` is the report, 503 `loading` until warm.
Imports core services only; never FastAPI.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from tldw_Server_API.app.core.Embeddings._sql_engine import ping
from tldw_Server_API.app.core.Embeddings.embedding_service import EmbeddingService
from tldw_Server_API.app.core.errors import ServiceUnavailable
from tldw_Server_API.app.core.RAG.vector_stores.factory import VectorStoreFactory

Probe = Callable[[], Awaitable[None]]
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ComponentHealth:
    status: str                 # "ok" | "unavailable"
    latency_ms: float
    detail: str | None = None   # a safe reason, never exception text

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "latency_ms": round(self.latency_ms, 1), "detail": self.detail}


async def run_probe(name: str, probe: Probe, timeout_s: float = PROBE_TIMEOUT_S) -> ComponentHealth:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe(), timeout_s)
    except TimeoutError:
        detail = f"no answer within {timeout_s:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure of a probe means "unavailable"
        logger.warning("health: {} probe failed: {}: {}", name, type(exc).__name__, exc)
        detail = "unreachable or failing (see the server log)"
    else:
        return ComponentHealth("ok", (time.perf_counter() - started) * 1000)
    return ComponentHealth("unavailable", (time.perf_counter() - started) * 1000, detail)


class HealthService:
    """The health report and readiness, from the embeddings service and the component probes;
    built once in the lifespan."""

    def __init__(self, embeddings: EmbeddingService, vector_stores: VectorStoreFactory, jobs_engine: Any,
                 redis_url: str | None = None, timeout_s: float = PROBE_TIMEOUT_S,
                 warming: asyncio.Task[None] | None = None) -> None:
        self._embeddings = embeddings
        self._warming = warming
        self._probes: dict[str, Probe] = {
            "vector_store": lambda: asyncio.to_thread(vector_stores.probe),
            "jobs_db": lambda: asyncio.to_thread(ping, jobs_engine),
        }
        self._redis: Any = None
        if redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=timeout_s,
                                                  socket_timeout=timeout_s)
            self._probes["redis"] = self._ping_redis
        self._timeout_s = timeout_s

    async def _ping_redis(self) -> None:
        await self._redis.ping()

    async def components(self) -> dict[str, ComponentHealth]:
        names = list(self._probes)
        results = await asyncio.gather(*(run_probe(n, self._probes[n], self._timeout_s) for n in names))
        return dict(zip(names, results, strict=True))

    @property
    def loading(self) -> bool:
        """The start-up warmup of PRELOAD_EMBEDDING_MODELS has not finished yet."""
        return self._warming is not None and not self._warming.done()

    async def report(self) -> dict[str, Any]:
        """`loading` while the start-up models warm up, then `healthy`, or `degraded` when a
        provider, breaker or component is not."""
        report, components = await asyncio.gather(self._embeddings.health(), self.components())
        report["components"] = {name: health.as_dict() for name, health in components.items()}
        if any(health.status != "ok" for health in components.values()):
            report["status"] = "degraded"
        if self.loading:
            report["status"] = "loading"
        return report

    async def ready(self) -> dict[str, Any]:
        """Every component answers; else ServiceUnavailable naming the ones that do not."""
        if self.loading:
            raise ServiceUnavailable("not ready: the start-up models are still loading", retry_after=2.0,
                                     code="not_ready")
        components = await self.components()
        failing = sorted(name for name, health in components.items() if health.status != "ok")
        if failing:
            raise ServiceUnavailable(f"not ready: {', '.join(failing)} unavailable", retry_after=5.0,
                                     code="not_ready")
        return {"status": "ready", "components": {n: h.as_dict() for n, h in components.items()}}

    async def aclose(self) -> None:
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
        if self._redis is not None:
            await self._redis.aclose()
