"""Runs the Redis Streams pipeline's worker pools:
`python -m tldw_Server_API.app.core.Embeddings.worker_orchestrator --stage all|chunking|embedding|storage`.

Per stage it keeps between `EMBEDDINGS_WORKERS_MIN` and `EMBEDDINGS_WORKERS_MAX` worker processes
(`workers/base_worker.py --stage <stage>`: `ps` shows which stage each one serves), sized by the
stage's backlog (lag + pending, never stream length), restarts workers that died (not while the
operator drains the stage: its workers exit once it is empty), runs the
reconciler on start and on an interval (jobs the jobs DB says are unfinished but Redis has no
message for are re-enqueued), and publishes per stage lag, pending, oldest pending idle time, DLQ
depth, live workers and throughput as Prometheus gauges (`--metrics-port`; usable by KEDA) and as a
JSON summary in Redis read by `GET /api/v1/embeddings/orchestrator/summary`. A stall is declared
only when a stage has backlog, its oldest pending entry is idle past the lease and nothing was
handled since the last look. Run one per machine; they share the streams through consumer groups.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from loguru import logger
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tldw_Server_API.app.core.config import PipelineConfig, Settings
from tldw_Server_API.app.core.Embeddings.worker_config import STAGES, StreamNames, signer_of

BACKLOG_PER_WORKER = 64      # messages waiting per worker before the pool grows


def summary_key(names: StreamNames) -> str:
    return f"{names.prefix}embeddings:orchestrator:summary"


def target_size(backlog: int, current: int, low: int, high: int) -> int:
    """Workers a stage should have: enough for its backlog, within [low, high]; shrinks by one
    at a time once the backlog is gone (pure)."""
    wanted = math.ceil(backlog / BACKLOG_PER_WORKER) if backlog else 0
    if wanted < current:
        wanted = current - 1
    return max(low, min(high, wanted))


@dataclass
class Pool:
    stage: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    restarts: int = 0
    last_handled: int = 0


class Orchestrator:
    def __init__(self, settings: Settings, stages: tuple[str, ...], *, interval: float = 2.0,
                 reconcile_every: float = 30.0) -> None:
        self.settings = settings
        self.config: PipelineConfig = settings.pipeline_config()
        self.names = StreamNames(self.config.prefix)
        self.pools = {stage: Pool(stage) for stage in stages}
        self.interval = interval
        self.reconcile_every = reconcile_every
        self._stop = asyncio.Event()
        registry = CollectorRegistry()
        self.registry = registry
        labels = ["stage"]
        self.gauges = {name: Gauge(f"tldw_pipeline_{name}", text, labels, registry=registry) for name, text in (
            ("lag", "Entries not yet delivered to the stage's group"),
            ("pending", "Entries delivered and not yet acked"),
            ("oldest_pending_idle_seconds", "Idle time of the oldest pending entry"),
            ("dlq_depth", "Dead letters of the stage"),
            ("workers", "Live worker processes of the stage"),
            ("handled_total", "Messages the stage has handled"),
        )}

    def stop(self) -> None:
        self._stop.set()

    def _spawn(self, stage: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "tldw_Server_API.app.core.Embeddings.workers.base_worker", "--stage", stage]
        return subprocess.Popen(command)

    async def run(self) -> None:
        import redis.asyncio as aioredis

        from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDBFactory
        from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobsDB
        from tldw_Server_API.app.core.Embeddings.workers.base_worker import ensure_groups
        from tldw_Server_API.app.core.Embeddings.workers.redis_executor import reconcile, stage_stats

        redis = aioredis.Redis.from_url(self.config.redis_url)
        storage = self.settings.storage_config()
        jobs = JobsDB(storage.jobs_db_url)
        media_dbs = MediaDBFactory(storage.data_dir)
        await ensure_groups(redis, self.names, STAGES)
        last_reconcile = 0.0
        try:
            while not self._stop.is_set():
                if time.monotonic() - last_reconcile >= self.reconcile_every:
                    last_reconcile = time.monotonic()
                    await reconcile(redis, self.names, jobs, media_dbs, grace_seconds=self.config.lease_seconds,
                                    signer=signer_of(self.config))
                summary = {}
                for stage, pool in self.pools.items():
                    stats = await stage_stats(redis, self.names, stage)
                    self._tend(pool, stats)
                    stats["processes"] = len(pool.processes)
                    stats["restarts"] = pool.restarts
                    summary[stage] = stats
                    for name, gauge in self.gauges.items():
                        gauge.labels(stage).set(stats["handled" if name == "handled_total" else name])
                await redis.set(summary_key(self.names), orjson.dumps({"at": time.time(), "stages": summary}),
                                ex=max(60, int(self.interval * 10)))
                try:
                    await asyncio.wait_for(self._stop.wait(), self.interval)
                except TimeoutError:
                    pass
        finally:
            for pool in self.pools.values():
                self._shrink(pool, 0)
            await redis.aclose()

    def _tend(self, pool: Pool, stats: dict[str, Any]) -> None:
        alive = [p for p in pool.processes if p.poll() is None]
        dead = len(pool.processes) - len(alive)
        if dead:
            logger.warning("orchestrator: {} {} worker(s) died; restarting", dead, pool.stage)
            pool.restarts += dead
        pool.processes = alive
        if stats["state"] == "draining":
            return     # its workers exit once the stage is empty; none is started until a resume
        stalled = (stats["backlog"] and stats["oldest_pending_idle_seconds"] > self.config.lease_seconds
                   and stats["handled"] == pool.last_handled)
        if stalled:
            logger.warning("orchestrator: the {} stage is stalled (backlog {}, nothing handled, a lease expired)",
                           pool.stage, stats["backlog"])
        pool.last_handled = stats["handled"]
        size = target_size(stats["backlog"], len(alive), self.config.workers_min, self.config.workers_max)
        while len(pool.processes) < size:
            pool.processes.append(self._spawn(pool.stage))
        self._shrink(pool, size)

    @staticmethod
    def _shrink(pool: Pool, size: int) -> None:
        while len(pool.processes) > size:
            process = pool.processes.pop()
            process.terminate()        # SIGTERM: the worker drains its current message
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def main(argv: list[str] | None = None) -> None:
    from tldw_Server_API.app.core.observability import configure_logging

    parser = argparse.ArgumentParser(description="Run and scale the Redis Streams pipeline's worker pools.")
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between looks at the streams")
    parser.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics here (0: off)")
    args = parser.parse_args(argv)
    settings = Settings()  # type: ignore[call-arg]  # every field has a default or comes from the environment
    configure_logging(settings.logging_config())
    stages = STAGES if args.stage == "all" else (args.stage,)
    orchestrator = Orchestrator(settings, stages, interval=args.interval)
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=orchestrator.registry)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, orchestrator.stop)
        await orchestrator.run()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
