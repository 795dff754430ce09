"""The Redis Streams executor (`EMBEDDINGS_PIPELINE=redis`) seen from the server process, and
the pipeline's operational reads shared with the orchestrator and admin routes.

`RedisExecutor` enqueues a job's chunking message (with the text: workers never read files of
another machine) and answers capacity from the streams: backpressure (Overloaded, 429 with
Retry-After) when a stage's lag + pending passes the configured depth or its oldest waiting entry
passes the configured age. `stage_stats` reads lag (`XINFO GROUPS`), pending, oldest pending idle
time, DLQ depth, retries waiting, live workers and the operator's state (running, paused,
draining) per stage; `control` pauses, drains or resumes a stage; `reconcile` re-enqueues, from the
jobs DB, every unfinished job that has no message in any stream or delayed set (Redis restarted
empty or was flushed), so no job is ever stuck; `resubmit` does the same for one job an operator
requeues, `reprioritize` moves a job's waiting entries to another priority, and
`broadcast_breaker_reset` reaches every worker process. Messages are signed when a secret is set.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from loguru import logger

from tldw_Server_API.app.core.config import PipelineConfig
from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDBFactory
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobRecord, JobsDB
from tldw_Server_API.app.core.Embeddings.messages import from_fields, job_of, text_of, to_fields
from tldw_Server_API.app.core.Embeddings.pipeline_executor import spec_message
from tldw_Server_API.app.core.Embeddings.queue_schemas import ChunkingMessage
from tldw_Server_API.app.core.Embeddings.request_signing import MessageSigner
from tldw_Server_API.app.core.Embeddings.worker_config import STAGES, StreamNames, signer_of
from tldw_Server_API.app.core.Embeddings.workers.base_worker import control_stage, ensure_groups, stage_state
from tldw_Server_API.app.core.errors import NotFound, Overloaded, TLDWError

# Move one entry to another stream unless a worker has taken it (it is in the group's PEL) or it
# is gone: check, XDEL and XADD in one step.
_MOVE_UNTAKEN = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) > 0 then return 0 end
if redis.call('XDEL', KEYS[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
return 1
"""


async def stage_stats(redis: Any, names: StreamNames, stage: str) -> dict[str, Any]:
    """Lag + pending (the autoscaling signal), oldest pending idle, oldest waiting age, DLQ depth,
    retries waiting, live workers and messages handled, for one stage."""
    lag = pending = 0
    oldest_idle_ms = 0
    oldest_age_s = 0.0
    now_ms = time.time() * 1000
    for stream in names.streams(stage):
        groups = await redis.xinfo_groups(stream) if await redis.exists(stream) else []
        for group in groups:
            if text_of(group["name"]) == names.group(stage):
                waiting = int(group.get("pending") or 0)
                pending += waiting
                # Redis reports no lag after an out-of-order delete; acked entries are deleted,
                # so the stream's length less its pending entries is what waits.
                reported = group.get("lag")
                lag += int(reported) if reported is not None else max(0, int(await redis.xlen(stream)) - waiting)
        first = await redis.xrange(stream, count=1)
        if first:
            oldest_age_s = max(oldest_age_s, (now_ms - int(text_of(first[0][0]).split("-")[0])) / 1000)
        if pending:
            rows = await redis.xpending_range(stream, names.group(stage), min="-", max="+", count=1)
            if rows:
                oldest_idle_ms = max(oldest_idle_ms, int(rows[0]["time_since_delivered"]))
    workers = 0
    async for key in redis.scan_iter(match=names.heartbeat_pattern(), count=200):
        value = await redis.get(key)
        if value and stage in orjson.loads(value).get("stages", []):
            workers += 1
    handled = await redis.hget(names.stats(stage), "handled")
    return {
        "stage": stage, "lag": lag, "pending": pending, "backlog": lag + pending,
        "oldest_pending_idle_seconds": oldest_idle_ms / 1000, "oldest_waiting_seconds": round(oldest_age_s, 3),
        "dlq_depth": int(await redis.xlen(names.dlq(stage))),
        "retries_waiting": int(await redis.zcard(names.delayed(stage))),
        "workers": workers, "handled": int(handled or 0), "state": await stage_state(redis, names, stage),
    }


async def reconcile(redis: Any, names: StreamNames, jobs: JobsDB, media_dbs: MediaDBFactory | None,
                    grace_seconds: float = 30.0, signer: MessageSigner | None = None) -> int:
    """Re-enqueue every unfinished job (untouched for `grace_seconds`) that has no message in any
    stream or delayed set. Returns how many were re-enqueued."""
    present: set[str] = set()
    for stage in STAGES:
        for stream in names.streams(stage):
            for _, fields in await redis.xrange(stream):
                present.add(job_of(fields))
        for member in await redis.zrange(names.delayed(stage), 0, -1):
            present.add(str(orjson.loads(member).get("job", "")))
    cutoff = datetime.now(UTC) - timedelta(seconds=grace_seconds)
    enqueued = 0
    for job in await asyncio.to_thread(jobs.resumable_jobs):
        if job.job_id in present or job.updated_at > cutoff or job.held(datetime.now(UTC)):
            continue
        if await enqueue_spec(redis, names, job, media_dbs, signer):
            enqueued += 1
    if enqueued:
        logger.warning("pipeline reconciler: re-enqueued {} job(s) that had no message in Redis", enqueued)
    return enqueued


async def enqueue_spec(redis: Any, names: StreamNames, job: JobRecord, media_dbs: MediaDBFactory | None,
                       signer: MessageSigner | None) -> bool:
    """Enqueue a job's chunking message again, from its stored spec and the media text (the
    reconciler, an operator's requeue). False for a job of an earlier version (no spec)."""
    message = spec_message(job)
    if message is None:
        return False
    message = await asyncio.to_thread(_with_content, message, media_dbs)
    await redis.xadd(names.stream("chunking", message.priority), to_fields(message, signer))
    return True


def _with_content(message: ChunkingMessage, media_dbs: MediaDBFactory | None) -> ChunkingMessage:
    if media_dbs is None:
        return message
    try:
        media = media_dbs.get(message.user_id).get_media(message.media_id)
    except NotFound:
        return message   # deleted: the chunking step fails the job
    return message.model_copy(update={"content": media.content, "page_starts": media.page_starts})


class RedisExecutor:
    """Jobs go to `embeddings:chunking`; worker processes run them. Job state is in the jobs DB."""

    carries_content = True

    def __init__(self, redis: Any, config: PipelineConfig, jobs: JobsDB,
                 media_dbs: MediaDBFactory | None = None) -> None:
        self.redis = redis
        self.names = StreamNames(config.prefix)
        self._config = config
        self._jobs = jobs
        self._media_dbs = media_dbs
        self.signer = signer_of(config)

    async def start(self) -> None:
        await ensure_groups(self.redis, self.names, STAGES)

    async def enqueue(self, message: ChunkingMessage) -> None:
        await self.redis.xadd(self.names.stream("chunking", message.priority), to_fields(message, self.signer))

    async def resubmit(self, job: JobRecord) -> bool:
        return await enqueue_spec(self.redis, self.names, job, self._media_dbs, self.signer)

    async def reprioritize(self, job_id: str, priority: str) -> int:
        """Move the job's waiting entries to the priority's sub-stream: only entries no worker has
        taken (checked and moved in one script, so a worker reading it meanwhile cannot get it
        twice) and, with signing on, only entries whose signature verifies (a forged entry is
        never re-signed). Returns how many moved."""
        move = self.redis.register_script(_MOVE_UNTAKEN)
        moved = 0
        for stage in STAGES:
            target = self.names.stream(stage, priority)
            for stream in self.names.streams(stage):
                if stream == target or not await self.redis.exists(stream):
                    continue
                for entry_id, fields in await self.redis.xrange(stream):
                    if job_of(fields) != job_id:
                        continue
                    try:
                        if self.signer is not None:
                            self.signer.verify(fields)
                        message = from_fields(fields).model_copy(update={"priority": priority})
                    except TLDWError:
                        continue   # a bad entry is the worker's to dead-letter, never ours to re-sign
                    args: list[Any] = [self.names.group(stage), entry_id]
                    for key, value in to_fields(message, self.signer).items():
                        args += [key, value]
                    moved += int(await move(keys=[stream, target], args=args))
        return moved

    async def broadcast_breaker_reset(self, provider: str) -> None:
        """Every worker process resets its breaker of `provider` (they follow this counter)."""
        await self.redis.hincrby(self.names.breaker_resets(), provider, 1)

    async def check_capacity(self, jobs: int = 1) -> None:  # noqa: ARG002 - backpressure is per stage
        for stage in STAGES:
            stats = await stage_stats(self.redis, self.names, stage)
            if stats["backlog"] > self._config.backpressure_depth:
                raise Overloaded(f"the {stage} stage has {stats['backlog']} messages waiting; retry later",
                                 retry_after=30)
            if stats["oldest_waiting_seconds"] > self._config.backpressure_age_seconds:
                raise Overloaded(f"the {stage} stage's oldest message waits {stats['oldest_waiting_seconds']:.0f}s; "
                                 "retry later", retry_after=30)

    async def control(self, stage: str, action: str) -> str:
        return await control_stage(self.redis, self.names, stage, action)

    async def summary(self) -> dict[str, object]:
        stages = [await stage_stats(self.redis, self.names, stage) for stage in STAGES]
        last = await self.redis.get(f"{self.names.prefix}embeddings:orchestrator:summary")
        return {"mode": "redis", "stages": stages, "orchestrator": orjson.loads(last) if last else None}

    async def wait_idle(self) -> None:
        """Until no job is queued or running (tests; the workers are other processes)."""
        while await asyncio.to_thread(self._jobs.resumable_jobs):
            await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        await self.redis.aclose()
