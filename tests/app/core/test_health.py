"""Component probes of `HealthService` on real services: Chroma, the jobs DB (SQLite) and Redis
answer `ok`; Redis on a closed port, an unreachable PostgreSQL and a probe that hangs answer
`unavailable` within the probe timeout, with a safe reason (never exception text)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import redis
from support import free_port, require_service

from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobsDB
from tldw_Server_API.app.core.health import HealthService, run_probe
from tldw_Server_API.app.core.RAG.vector_stores.factory import ChromaVectorStoreFactory, PgVectorStoreFactory


def redis_url() -> str:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.RedisError:
        require_service(f"Redis at {url}")
    return url


def components(stores: Any, jobs: JobsDB, redis_at: str | None) -> dict[str, Any]:
    async def check() -> dict[str, Any]:
        service = HealthService(None, stores, jobs.engine, redis_at, timeout_s=1.0)  # type: ignore[arg-type]
        try:
            return {name: health.as_dict() for name, health in (await service.components()).items()}
        finally:
            await service.aclose()

    return asyncio.run(check())


def test_every_component_up_is_ok(tmp_path: Path) -> None:
    stores = ChromaVectorStoreFactory(tmp_path)
    stores.for_user("alice").ensure_collection("probe-me", 4)
    found = components(stores, JobsDB(f"sqlite:///{tmp_path}/jobs.db"), redis_url())
    assert {name: c["status"] for name, c in found.items()} == {"vector_store": "ok", "jobs_db": "ok", "redis": "ok"}
    stores.close()


def test_redis_down_and_postgres_unreachable_are_unavailable_quickly(tmp_path: Path) -> None:
    stores = PgVectorStoreFactory(f"postgresql://nobody@127.0.0.1:{free_port()}/none?connect_timeout=1", 40)
    started = time.monotonic()
    found = components(stores, JobsDB(f"sqlite:///{tmp_path}/jobs.db"), f"redis://127.0.0.1:{free_port()}/0")
    assert time.monotonic() - started < 5
    assert found["vector_store"]["status"] == found["redis"]["status"] == "unavailable"
    assert found["jobs_db"]["status"] == "ok"
    assert found["redis"]["detail"] == "unreachable or failing (see the server log)"
    stores.close()


def test_a_probe_that_hangs_is_unavailable_after_the_timeout() -> None:
    async def hang() -> None:
        await asyncio.sleep(30)

    health = asyncio.run(run_probe("slow", hang, timeout_s=0.2))
    assert health.status == "unavailable" and health.detail == "no answer within 0.2 s"
