"""The delivery loop of the Redis Streams pipeline, once for every stage: at-least-once delivery
with exactly-once effects (the handlers upsert by deterministic id and write their DB state before
the ack). Read by consumer group `{stage}-workers` from the priority sub-streams by weight; run the
stage handler (`stages.run_stage`); `XADD` the next stage's messages, `XACK` and `XDEL` the entry
in one MULTI, so a crash never loses a message and acked entries never pile up.

Failures follow `core/errors.py`'s worker outcome table: a transient one is retried through the
stage's delayed set (exponential backoff with jitter, moved back by an atomic script); a refusal
by rule (a quota) fails the job and drops the message; a permanent one, too many retries, too
many deliveries (a message that kills its worker), or a payload that does not decode, fail the
job and go to `embeddings:{stage}:dlq` keyed by the original id (idempotent), then are acked.
With a signing secret, a message whose signature is missing, wrong or stale goes to the DLQ
(`bad_signature`) unprocessed and its job untouched; what a worker sends it signs. Dead-letter
payloads are encrypted when a key is set. Operators' broadcasts (a breaker reset) reach every
worker through Redis.
Leases, not locks: each worker renews a heartbeat key with a TTL; its reaper claims only entries
idle past the lease whose owner's heartbeat has expired. An operator's pause stops reads of a
stage (messages wait); a drain lets its workers finish what waits and then exit.

`python -m tldw_Server_API.app.core.Embeddings.workers.base_worker --stage embedding` runs one
worker process (the orchestrator starts them); SIGTERM drains (the current message finishes).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from loguru import logger

from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobStatus
from tldw_Server_API.app.core.Embeddings.messages import Fields, dead_letter_fields, from_fields, text_of, to_fields
from tldw_Server_API.app.core.Embeddings.queue_schemas import MessageSchemaError, PipelineMessage
from tldw_Server_API.app.core.Embeddings.request_signing import BadSignature
from tldw_Server_API.app.core.Embeddings.retries import step_retry_delay
from tldw_Server_API.app.core.Embeddings.stage_context import Embedded, Embedder, StageContext, media_collection
from tldw_Server_API.app.core.Embeddings.worker_config import PRIORITIES, PRIORITY_WEIGHTS, StreamNames, WorkerConfig
from tldw_Server_API.app.core.Embeddings.workers.stages import run_stage
from tldw_Server_API.app.core.errors import TLDWError, WorkerOutcome, worker_outcome

__all__ = ["Embedded", "Embedder", "StageContext", "StageWorker", "control_stage", "ensure_groups",
           "media_collection", "stage_state"]

# Move due retries back to their streams: ZREM then XADD per member, atomically.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local m = cjson.decode(member)
  if m.sig then
    redis.call('XADD', m.stream, '*', 'job', m.job, 'stage', m.stage, 'data', m.data, 'ts', m.ts, 'sig', m.sig)
  else
    redis.call('XADD', m.stream, '*', 'job', m.job, 'stage', m.stage, 'data', m.data)
  end
end
return #due
"""
# Dead-letter once per original entry (stream + id: ids repeat across priority sub-streams),
# then ack and delete the entry.
_DEAD_LETTER = """
local key = KEYS[3] .. '|' .. ARGV[1]
if redis.call('HSETNX', KEYS[1], key, '1') == 1 then
  local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
  redis.call('HSET', KEYS[1], key, id)
end
redis.call('XACK', KEYS[3], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[3], ARGV[1])
return 1
"""


async def stage_state(redis: Any, names: StreamNames, stage: str) -> str:
    """`paused`, `draining` or `running`: what the operator set for the stage."""
    if await redis.exists(names.paused(stage)):
        return "paused"
    return "draining" if await redis.exists(names.draining(stage)) else "running"


async def control_stage(redis: Any, names: StreamNames, stage: str, action: str) -> str:
    """Apply an operator's `STAGE_ACTIONS` entry to a stage; returns its new state. Workers read
    the flags before every read, so the change holds for every worker on every machine."""
    if action == "pause":
        await redis.set(names.paused(stage), "1")
    elif action == "drain":
        async with redis.pipeline(transaction=True) as pipe:
            pipe.delete(names.paused(stage))
            pipe.set(names.draining(stage), "1")
            await pipe.execute()
    elif action == "resume":
        await redis.delete(names.paused(stage), names.draining(stage))
    else:
        raise ValueError(f"unknown stage action {action!r}")
    return await stage_state(redis, names, stage)


async def ensure_groups(redis: Any, names: StreamNames, stages: Sequence[str]) -> None:
    """Create every stage stream's consumer group (and the stream) where missing."""
    from redis.exceptions import ResponseError

    for stage in stages:
        for stream in names.streams(stage):
            try:
                await redis.xgroup_create(stream, names.group(stage), id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise


class StageWorker:
    """One consumer of the given stages. Run `run()`; `stop()` drains (the current message ends)."""

    def __init__(self, config: WorkerConfig, context: StageContext, redis: Any, consumer: str | None = None) -> None:
        self.config = config
        self.names = config.names
        self.context = context
        self.redis = redis
        stages = "+".join(config.stages)
        self.consumer = consumer or f"{stages}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._stopping = asyncio.Event()
        self._cycle = itertools.cycle([p for p in PRIORITIES for _ in range(PRIORITY_WEIGHTS[p])])
        self._move_due = redis.register_script(_MOVE_DUE)
        self._dead_letter_script = redis.register_script(_DEAD_LETTER)
        self._last_reap = 0.0
        self._last_control = 0.0
        self._breaker_epochs: dict[str, bytes] | None = None
        self.handled = 0

    def stop(self) -> None:
        self._stopping.set()

    # --- the loop --------------------------------------------------------------------------------
    async def run(self) -> None:
        await ensure_groups(self.redis, self.names, self.config.stages)
        await self._beat()
        beating = asyncio.create_task(self._heartbeat())
        logger.info("pipeline worker {} started ({})", self.consumer, ", ".join(self.config.stages))
        try:
            while not self._stopping.is_set():
                await self._follow_operator()
                for stage in self.config.stages:
                    await self._move_due(keys=[self.names.delayed(stage)], args=[time.time()])
                if time.monotonic() - self._last_reap >= self.config.lease_seconds / 2:
                    self._last_reap = time.monotonic()
                    for stage in self.config.stages:
                        await self._reap(stage)
                entries = await self._read()
                if not entries:
                    if self.config.burst and await self._empty():
                        break
                    continue
                for stream, entry_id, fields in entries:
                    await self._process(stream, entry_id, fields)
        finally:
            beating.cancel()
            await self.redis.delete(self.names.heartbeat(self.consumer))
            logger.info("pipeline worker {} stopped after {} message(s)", self.consumer, self.handled)

    async def _beat(self) -> None:
        value = orjson.dumps({"pid": os.getpid(), "host": socket.gethostname(), "stages": self.config.stages,
                              "handled": self.handled})
        ttl = max(1, math.ceil(self.config.lease_seconds))
        await self.redis.set(self.names.heartbeat(self.consumer), value, ex=ttl)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.lease_seconds / 3)
            try:
                await self._beat()
            except Exception as exc:  # noqa: BLE001 - Redis away for a moment: the next beat retries
                logger.warning("pipeline worker {}: heartbeat failed: {}", self.consumer, exc)

    async def _follow_operator(self) -> None:
        """Apply what operators broadcast to every worker (at most once a second): a circuit
        breaker reset bumps a provider's counter, and this process resets its own breaker."""
        if time.monotonic() - self._last_control < 1.0:
            return
        self._last_control = time.monotonic()
        epochs = {text_of(k): v for k, v in (await self.redis.hgetall(self.names.breaker_resets())).items()}
        if self._breaker_epochs is not None and self.context.reset_breaker is not None:
            for provider, epoch in epochs.items():
                if self._breaker_epochs.get(provider) != epoch:
                    try:
                        self.context.reset_breaker(provider)
                        logger.info("pipeline worker {}: circuit breaker of {} reset by an operator", self.consumer,
                                    provider)
                    except TLDWError as exc:
                        logger.warning("pipeline worker {}: breaker reset of {} refused: {}", self.consumer,
                                       provider, exc.message)
        self._breaker_epochs = epochs

    async def _active_stages(self) -> list[str]:
        """The stages to read now: not paused, and not drained (draining with nothing waiting).
        Once every stage of this worker is drained, the worker stops (its drain is done)."""
        active, drained = [], 0
        for stage in self.config.stages:
            state = await stage_state(self.redis, self.names, stage)
            if state == "draining" and await self._empty((stage,)):
                drained += 1
            elif state != "paused":
                active.append(stage)
        if drained == len(self.config.stages):
            logger.info("pipeline worker {}: drained; stopping", self.consumer)
            self.stop()
        return active

    async def _read(self) -> list[tuple[str, str, Fields]]:
        """One entry: the first priority of this cycle's turn that has one (later stages first),
        else a blocking read over every stream."""
        stages = list(reversed(await self._active_stages()))
        if not stages:
            await asyncio.sleep(self.config.block_ms / 1000)
            return []
        first = next(self._cycle)
        order = [first, *[p for p in PRIORITIES if p != first]]
        for stage in stages:
            for priority in order:
                stream = self.names.stream(stage, priority)
                found = await self.redis.xreadgroup(self.names.group(stage), self.consumer, {stream: ">"}, count=1)
                if found:
                    return self._entries(found)
        found = []
        for stage in stages:   # one group per stage: block on the last, poll the others
            streams = dict.fromkeys(self.names.streams(stage), ">")
            block = self.config.block_ms if stage == stages[-1] else None
            found += await self.redis.xreadgroup(self.names.group(stage), self.consumer, streams, count=1,
                                                 block=block) or []
        return self._entries(found)

    @staticmethod
    def _entries(found: Any) -> list[tuple[str, str, Fields]]:
        return [(text_of(stream), text_of(entry_id), fields) for stream, items in found for entry_id, fields in items]

    def _stage_of(self, stream: str) -> str:
        for stage in self.config.stages:
            if stream in self.names.streams(stage):
                return stage
        raise ValueError(f"not a stream of this worker: {stream}")

    # --- one message -----------------------------------------------------------------------------
    async def _deliveries(self, stream: str, stage: str, entry_id: str) -> int:
        rows = await self.redis.xpending_range(stream, self.names.group(stage), min=entry_id, max=entry_id, count=1)
        return int(rows[0]["times_delivered"]) if rows else 1

    async def _process(self, stream: str, entry_id: str, fields: Fields) -> None:
        stage = self._stage_of(stream)
        if not fields:   # deleted while pending (acked elsewhere): nothing to do
            await self.redis.xack(stream, self.names.group(stage), entry_id)
            return
        if self.config.signer is not None:
            try:
                self.config.signer.verify(fields)
            except BadSignature as exc:   # never processed; its job is not touched (the message may be forged)
                await self._dead_letter(stream, stage, entry_id, fields, exc, 1)
                return
        try:
            message = from_fields(fields)
        except MessageSchemaError as exc:
            await self._dead_letter(stream, stage, entry_id, fields, exc, 1)
            return
        deliveries = await self._deliveries(stream, stage, entry_id)
        if deliveries > self.config.max_deliveries:
            error = TLDWError(f"delivered {deliveries} times without finishing", code="too_many_deliveries")
            await self._fail_job(message, error)
            await self._dead_letter(stream, stage, entry_id, fields, error, deliveries)
            return
        try:
            following = await run_stage(message, self.context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - settled by the outcome table; the worker goes on
            if worker_outcome(exc) == WorkerOutcome.RETRY and message.attempt < self.config.max_retries:
                await self._retry_later(stream, stage, entry_id, message, exc)
                return
            if not isinstance(exc, TLDWError):
                logger.opt(exception=exc).error("pipeline: job {} {} step failed", message.job_id, stage)
            await self._fail_job(message, exc)
            if worker_outcome(exc) == WorkerOutcome.FAIL_JOB:
                logger.info("pipeline: job {} refused at {}: {}", message.job_id, stage, exc)
                await self._forward(stream, stage, entry_id, [])
                return
            await self._dead_letter(stream, stage, entry_id, fields, exc, message.attempt + 1)
            return
        await self._forward(stream, stage, entry_id, following)

    async def _forward(self, stream: str, stage: str, entry_id: str, following: Sequence[PipelineMessage]) -> None:
        """The next stage's messages and the ack, in one MULTI."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for message in following:
                pipe.xadd(self.names.stream(message.stage, message.priority), to_fields(message, self.config.signer))
            pipe.xack(stream, self.names.group(stage), entry_id)
            pipe.xdel(stream, entry_id)
            pipe.hincrby(self.names.stats(stage), "handled", 1)
            await pipe.execute()
        self.handled += 1

    async def _retry_later(self, stream: str, stage: str, entry_id: str, message: PipelineMessage,
                           exc: BaseException) -> None:
        attempt = message.attempt
        delay = step_retry_delay(attempt + 1, exc, self.config.retry_base, self.config.retry_cap)
        retry = message.model_copy(update={"attempt": attempt + 1})
        fields = {k: v.decode() if isinstance(v, bytes) else v
                  for k, v in to_fields(retry, self.config.signer).items()}
        member = orjson.dumps({"stream": stream, **fields})
        logger.info("pipeline: job {} {} step failed ({}); retry {} in {:.1f}s", message.job_id, stage,
                    type(exc).__name__, attempt + 1, delay)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.names.delayed(stage), {member: time.time() + delay})
            pipe.xack(stream, self.names.group(stage), entry_id)
            pipe.xdel(stream, entry_id)
            await pipe.execute()

    async def _dead_letter(self, stream: str, stage: str, entry_id: str, fields: Fields, exc: BaseException,
                           attempts: int) -> None:
        from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import sanitize_error

        code = exc.code if isinstance(exc, TLDWError) else "internal_error"
        entry = dead_letter_fields(entry_id, stage, fields, sanitize_error(exc), code, attempts, datetime.now(UTC),
                                   self.config.crypto)
        args: list[Any] = [entry_id, self.names.group(stage)]
        for key, value in entry.items():
            args += [key, value]
        await self._dead_letter_script(keys=[self.names.dlq_index(stage), self.names.dlq(stage), stream], args=args)
        logger.warning("pipeline: {} entry {} dead-lettered: {}", stage, entry_id, entry["error"])

    async def _fail_job(self, message: PipelineMessage, exc: BaseException) -> None:
        try:
            await asyncio.to_thread(self.context.jobs.transition, message.job_id, JobStatus.FAILED, error=exc)
        except TLDWError:
            pass   # unknown job, or already terminal

    # --- leases ----------------------------------------------------------------------------------
    async def _reap(self, stage: str) -> None:
        """Claim entries idle past the lease whose owner's heartbeat expired, and handle them."""
        lease_ms = int(self.config.lease_seconds * 1000)
        group = self.names.group(stage)
        for stream in self.names.streams(stage):
            rows = await self.redis.xpending_range(stream, group, min="-", max="+", count=100, idle=lease_ms)
            owners = {text_of(row["consumer"]) for row in rows} - {self.consumer}
            alive = {owner for owner in owners if await self.redis.exists(self.names.heartbeat(owner))}
            ids = [row["message_id"] for row in rows if text_of(row["consumer"]) in owners - alive]
            if not ids:
                continue
            claimed = await self.redis.xclaim(stream, group, self.consumer, min_idle_time=lease_ms, message_ids=ids)
            logger.warning("pipeline worker {}: reclaimed {} {} entr(ies) of dead workers", self.consumer,
                           len(claimed), stage)
            for entry_id, fields in claimed:
                await self._process(stream, text_of(entry_id), fields or {})

    async def _empty(self, stages: Sequence[str] | None = None) -> bool:
        """No entry waiting or pending in the stages' streams (all of this worker's by default),
        and no retry scheduled (burst mode, drains)."""
        for stage in stages or self.config.stages:
            if await self.redis.zcard(self.names.delayed(stage)):
                return False
            for stream in self.names.streams(stage):
                if await self.redis.xlen(stream):
                    return False
        return True


# --- the worker process ----------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    from tldw_Server_API.app.core.config import Settings
    from tldw_Server_API.app.core.Embeddings.worker_config import STAGES
    from tldw_Server_API.app.core.observability import configure_logging
    from tldw_Server_API.app.core.tracing import configure_tracing

    parser = argparse.ArgumentParser(description="One Redis Streams pipeline worker process.")
    parser.add_argument("--stage", choices=[*STAGES, "all"], default="all", help="the stage it consumes")
    parser.add_argument("--burst", action="store_true", help="exit once the stage's streams are empty")
    args = parser.parse_args(argv)
    settings = Settings()  # type: ignore[call-arg]  # every field has a default or comes from the environment
    configure_logging(settings.logging_config())
    configure_tracing(settings.otel_exporter_otlp_endpoint, service_name="tldw-embeddings-worker")
    stages = STAGES if args.stage == "all" else (args.stage,)
    asyncio.run(_serve(settings, stages, args.burst))


async def _serve(settings: Any, stages: tuple[str, ...], burst: bool) -> None:
    import redis.asyncio as aioredis

    from tldw_Server_API.app.core.services import build_worker_context

    pipeline = settings.pipeline_config()
    context, close = await build_worker_context(settings, preload="embedding" in stages)
    redis = aioredis.Redis.from_url(pipeline.redis_url)
    worker = StageWorker(WorkerConfig.from_pipeline(pipeline, stages, burst=burst), context, redis)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    try:
        await worker.run()
    finally:
        await redis.aclose()
        await close()


if __name__ == "__main__":
    main()
