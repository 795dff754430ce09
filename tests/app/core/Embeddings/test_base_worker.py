"""The Redis Streams delivery loop (`StageWorker`) over a real Redis with a unique key prefix: leases
(a live slow worker keeps its entries, a dead one's are reclaimed), dead-lettering (undecodable
payloads, idempotent by original id, too many deliveries failing the job without running the
handler), the delayed retry set, the pause and drain flags, burst mode, priority reads, the executor's
backpressure, and the worker outcome table of `core/errors.py`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as redis_asyncio

from tldw_Server_API.app.core.config import PipelineConfig
from tldw_Server_API.app.core.Embeddings._sql_engine import dispose_engine
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobsDB, JobStatus
from tldw_Server_API.app.core.Embeddings.messages import to_fields
from tldw_Server_API.app.core.Embeddings.queue_schemas import ChunkOptions, ChunkPayload, EmbeddingMessage, encode
from tldw_Server_API.app.core.Embeddings.stage_context import StageContext
from tldw_Server_API.app.core.Embeddings.worker_config import StreamNames, WorkerConfig
from tldw_Server_API.app.core.Embeddings.workers.base_worker import (
    StageWorker,
    control_stage,
    ensure_groups,
    stage_state,
)
from tldw_Server_API.app.core.Embeddings.workers.redis_executor import RedisExecutor
from tldw_Server_API.app.core.errors import (
    InvalidInput,
    NotFound,
    Overloaded,
    ProviderError,
    ProviderTransientError,
    RateLimited,
    ServiceUnavailable,
    UpstreamRejectedRequest,
    WorkerOutcome,
    worker_outcome,
)

NOW = datetime(2025, 3, 1, 12, 30, 15, tzinfo=UTC)
STAGE = "embedding"
BAD_FIELDS = {"job": "job_x", "stage": STAGE, "data": b"{nope"}

Scenario = Callable[[Any, StreamNames, str], Awaitable[None]]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def worker_config(url: str, names: StreamNames, **overrides: Any) -> WorkerConfig:
    values: dict[str, Any] = {"names": names, "stages": (STAGE,), "lease_seconds": 1.0,
                              "block_ms": 50, "max_deliveries": 5}
    values.update(overrides)
    return WorkerConfig(**values)


def make_worker(redis: Any, url: str, names: StreamNames, consumer: str, context: StageContext | None = None,
                **overrides: Any) -> StageWorker:
    return StageWorker(worker_config(url, names, **overrides), context, redis, consumer=consumer)  # type: ignore[arg-type]


def run_scenario(redis_prefix: tuple[str, str], scenario: Scenario) -> None:
    """Run `scenario(redis, names, url)` on a fresh asyncio Redis client over the test's prefix."""
    url, prefix = redis_prefix
    names = StreamNames(prefix + ":")

    async def main() -> None:
        redis = redis_asyncio.Redis.from_url(url)
        try:
            await scenario(redis, names, url)
        finally:
            await redis.aclose()

    asyncio.run(main())


def embedding_message(job_id: str = "job_1", priority: str = "normal") -> EmbeddingMessage:
    chunks = [ChunkPayload(chunk_index=0, text="hello world", start_char=0, end_char=11)]
    return EmbeddingMessage(job_id=job_id, user_id="alice", media_id=7, created_at=NOW, content_hash="h",
                            embedding_model="m", embedding_provider="hf", chunks=chunks, total_chunks=1,
                            priority=priority)  # type: ignore[arg-type]


async def pel_count(redis: Any, names: StreamNames, stream: str) -> int:
    return int((await redis.xpending(stream, names.group(STAGE)))["pending"])


async def dlq_entries(redis: Any, names: StreamNames) -> list[dict[str, str]]:
    return [{_s(k): _s(v) for k, v in fields.items()} for _, fields in await redis.xrange(names.dlq(STAGE))]


# --- leases -------------------------------------------------------------------------------------


def test_a_live_slow_worker_is_not_robbed_and_a_dead_ones_entry_is_reclaimed(redis_prefix: tuple[str, str]) -> None:
    """Entries idle past the lease stay with a live owner; once its heartbeat is gone they are reclaimed."""

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        await ensure_groups(redis, names, [STAGE])
        stream = names.stream(STAGE)
        entry_id = _s(await redis.xadd(stream, BAD_FIELDS))
        found = await redis.xreadgroup(names.group(STAGE), "A", {stream: ">"}, count=1)
        assert _s(found[0][1][0][0]) == entry_id
        await redis.set(names.heartbeat("A"), b"{}", ex=30)   # A is alive (and slow)
        await asyncio.sleep(1.3)                              # idle longer than the 1 s lease
        b = make_worker(redis, url, names, "B")

        await b._reap(STAGE)
        pending = await redis.xpending(stream, names.group(STAGE))
        assert pending["pending"] == 1
        assert [_s(c["name"]) for c in pending["consumers"]] == ["A"]
        assert await redis.xlen(names.dlq(STAGE)) == 0 and await redis.xlen(stream) == 1

        await redis.delete(names.heartbeat("A"))               # A died
        await b._reap(STAGE)
        dlq = await dlq_entries(redis, names)
        assert len(dlq) == 1
        assert dlq[0]["original_id"] == entry_id and dlq[0]["code"] == "invalid_message"
        assert dlq[0]["stage"] == STAGE and dlq[0]["job"] == "job_x" and dlq[0]["data"] == "{nope"
        assert await pel_count(redis, names, stream) == 0
        assert await redis.xlen(stream) == 0                   # acked and deleted

    run_scenario(redis_prefix, scenario)


# --- dead letters -------------------------------------------------------------------------------


def test_dead_lettering_is_idempotent_by_original_id(redis_prefix: tuple[str, str]) -> None:
    """Processing the same undecodable entry twice yields one DLQ entry, indexed by its original id."""

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        await ensure_groups(redis, names, [STAGE])
        stream = names.stream(STAGE)
        worker = make_worker(redis, url, names, "W")
        await redis.xadd(stream, BAD_FIELDS)
        [(read_stream, entry_id, fields)] = await worker._read()
        assert read_stream == stream
        await worker._process(stream, entry_id, fields)
        await worker._process(stream, entry_id, fields)     # a redelivery of the same entry
        await worker._dead_letter(stream, STAGE, entry_id, fields, RuntimeError("again"), 2)
        dlq = await redis.xrange(names.dlq(STAGE))
        assert len(dlq) == 1
        assert _s(dlq[0][1][b"original_id"]) == entry_id
        assert _s(await redis.hget(names.dlq_index(STAGE), f"{stream}|{entry_id}")) == _s(dlq[0][0])
        assert await pel_count(redis, names, stream) == 0 and await redis.xlen(stream) == 0

    run_scenario(redis_prefix, scenario)


def test_equal_entry_ids_in_two_priority_streams_are_both_dead_lettered(redis_prefix: tuple[str, str]) -> None:
    """Entry ids are unique per stream only: the same id in the high and normal sub-streams (added in
    the same millisecond) are two messages, and both must reach the DLQ rather than one being dropped."""

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        await ensure_groups(redis, names, [STAGE])
        worker = make_worker(redis, url, names, "W")
        for priority, job in (("high", "job_high"), ("normal", "job_normal")):
            await redis.xadd(names.stream(STAGE, priority), {**BAD_FIELDS, "job": job}, id="7-0")
        for _ in range(2):
            [(stream, entry_id, fields)] = await worker._read()
            await worker._process(stream, entry_id, fields)
        for priority in ("high", "normal"):
            assert await redis.xlen(names.stream(STAGE, priority)) == 0      # both were acked and deleted
        dlq = await dlq_entries(redis, names)
        assert sorted(e["job"] for e in dlq) == ["job_high", "job_normal"]   # ... so both must be in the DLQ

    run_scenario(redis_prefix, scenario)


def test_too_many_deliveries_dead_letter_and_fail_the_job_without_running_the_handler(
    redis_prefix: tuple[str, str], tmp_path: Path
) -> None:
    """An entry delivered more than max_deliveries times goes to the DLQ (too_many_deliveries); the job fails."""
    jobs_url = f"sqlite:///{tmp_path}/jobs.db"
    jobs = JobsDB(jobs_url)
    job = jobs.create_job("alice", 7, embedding_model="m", embedding_provider="hf", chunk_method="sentences",
                          chunk_size=50, chunk_overlap=5)
    embed_calls: list[Any] = []

    async def embed(*args: Any) -> Any:
        embed_calls.append(args)
        raise AssertionError("the stage handler must not run")

    context = StageContext(media_dbs=None, vector_stores=None, embed=embed, jobs=jobs)  # type: ignore[arg-type]

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        await ensure_groups(redis, names, [STAGE])
        stream, group = names.stream(STAGE), names.group(STAGE)
        entry_id = _s(await redis.xadd(stream, to_fields(embedding_message(job.job_id))))
        await redis.xreadgroup(group, "crasher", {stream: ">"}, count=1)        # delivery 1
        await redis.xreadgroup(group, "crasher", {stream: "0"}, count=1)        # delivery 2 (its own PEL)
        await redis.xclaim(stream, group, "crasher", min_idle_time=0, message_ids=[entry_id])   # delivery 3
        rows = await redis.xpending_range(stream, group, min=entry_id, max=entry_id, count=1)
        assert rows[0]["times_delivered"] == 3
        worker = make_worker(redis, url, names, "W", context=context, max_deliveries=2)
        fields = (await redis.xrange(stream, min=entry_id, max=entry_id))[0][1]
        await worker._process(stream, entry_id, fields)
        dlq = await dlq_entries(redis, names)
        assert len(dlq) == 1
        assert dlq[0]["code"] == "too_many_deliveries" and dlq[0]["original_id"] == entry_id
        assert dlq[0]["attempts"] == "3" and dlq[0]["job"] == job.job_id
        assert await pel_count(redis, names, stream) == 0 and await redis.xlen(stream) == 0
        assert await redis.zcard(names.delayed(STAGE)) == 0      # not retried either
        assert worker.handled == 0

    try:
        run_scenario(redis_prefix, scenario)
        assert embed_calls == []
        failed = jobs.get_job("alice", job.job_id)
        assert failed.status == JobStatus.FAILED
        assert failed.error and "delivered 3 times" in failed.error
    finally:
        dispose_engine(jobs_url)


def test_too_many_deliveries_of_an_unknown_job_still_dead_letter(redis_prefix: tuple[str, str], tmp_path: Path) -> None:
    """`_fail_job` swallows NotFound for a job the jobs DB does not know; the entry is dead-lettered."""
    jobs_url = f"sqlite:///{tmp_path}/jobs.db"
    context = StageContext(media_dbs=None, vector_stores=None, embed=None, jobs=JobsDB(jobs_url))  # type: ignore[arg-type]

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        await ensure_groups(redis, names, [STAGE])
        stream, group = names.stream(STAGE), names.group(STAGE)
        entry_id = _s(await redis.xadd(stream, to_fields(embedding_message("job_missing"))))
        for _ in range(3):
            await redis.xreadgroup(group, "crasher", {stream: "0" if _ else ">"}, count=1)
        worker = make_worker(redis, url, names, "W", context=context, max_deliveries=2)
        fields = (await redis.xrange(stream, min=entry_id, max=entry_id))[0][1]
        await worker._process(stream, entry_id, fields)
        dlq = await dlq_entries(redis, names)
        assert [(e["original_id"], e["code"]) for e in dlq] == [(entry_id, "too_many_deliveries")]
        assert await pel_count(redis, names, stream) == 0

    try:
        run_scenario(redis_prefix, scenario)
    finally:
        dispose_engine(jobs_url)


# --- delayed retries, pause, burst, priority ----------------------------------------------------


def test_move_due_moves_only_due_retries_back_to_their_stream(redis_prefix: tuple[str, str]) -> None:
    """The delayed set's due member goes back into its stream; the future one stays."""

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        await ensure_groups(redis, names, [STAGE])
        worker = make_worker(redis, url, names, "W")
        stream = names.stream(STAGE, "high")
        due_message = embedding_message("job_due", "high").model_copy(update={"attempt": 1})
        due = orjson.dumps({"stream": stream, "job": "job_due", "stage": STAGE, "data": encode(due_message).decode()})
        later = orjson.dumps({"stream": stream, "job": "job_later", "stage": STAGE,
                              "data": encode(embedding_message("job_later", "high")).decode()})
        now = time.time()
        await redis.zadd(names.delayed(STAGE), {due: now - 5, later: now + 3600})
        moved = await worker._move_due(keys=[names.delayed(STAGE)], args=[time.time()])
        assert moved == 1
        assert await redis.xlen(stream) == 1 and await redis.zcard(names.delayed(STAGE)) == 1
        assert await redis.zrange(names.delayed(STAGE), 0, -1) == [later]
        [(_, fields)] = await redis.xrange(stream)
        assert _s(fields[b"job"]) == "job_due" and _s(fields[b"stage"]) == STAGE
        assert fields[b"data"] == encode(due_message)
        [(read_stream, _, read_fields)] = await worker._read()   # and a worker reads it from there
        assert read_stream == stream and _s(read_fields[b"job"]) == "job_due"

    run_scenario(redis_prefix, scenario)


def test_a_paused_stage_is_not_read(redis_prefix: tuple[str, str]) -> None:
    """With the pause flag set `_read` returns nothing although an entry waits; unpaused it returns it."""

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        await ensure_groups(redis, names, [STAGE])
        worker = make_worker(redis, url, names, "W")
        entry_id = _s(await redis.xadd(names.stream(STAGE), BAD_FIELDS))
        await redis.set(names.paused(STAGE), b"1")
        assert await worker._read() == []
        assert await worker._read() == []
        assert await pel_count(redis, names, names.stream(STAGE)) == 0   # nothing was delivered
        await redis.delete(names.paused(STAGE))
        entries = await worker._read()
        assert [(s, i) for s, i, _ in entries] == [(names.stream(STAGE), entry_id)]

    run_scenario(redis_prefix, scenario)


def test_a_draining_stage_is_worked_off_then_its_worker_exits(redis_prefix: tuple[str, str]) -> None:
    """Drain: the worker handles what waits (here: two undecodable entries, dead-lettered), then
    `run()` returns by itself; a paused stage is not drained; `resume` clears both flags."""

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        await ensure_groups(redis, names, [STAGE])
        for _ in range(2):
            await redis.xadd(names.stream(STAGE), BAD_FIELDS)
        assert await control_stage(redis, names, STAGE, "pause") == "paused"
        assert await stage_state(redis, names, STAGE) == "paused"
        worker = make_worker(redis, url, names, "W")
        run = asyncio.create_task(worker.run())
        await asyncio.sleep(0.5)
        assert not run.done() and await redis.xlen(names.stream(STAGE)) == 2     # paused: waits
        assert await control_stage(redis, names, STAGE, "drain") == "draining"
        await asyncio.wait_for(run, timeout=10)                                 # drained: stopped
        assert await redis.xlen(names.stream(STAGE)) == 0 and await redis.xlen(names.dlq(STAGE)) == 2
        assert await control_stage(redis, names, STAGE, "resume") == "running"
        assert not await redis.exists(names.paused(STAGE), names.draining(STAGE))
        with pytest.raises(ValueError, match="unknown stage action"):
            await control_stage(redis, names, STAGE, "stop")

    run_scenario(redis_prefix, scenario)


def test_the_orchestrator_starts_no_worker_for_a_draining_stage(tmp_path: Path) -> None:
    """A draining stage's exited workers are not restarted (nor new ones started); running, it is."""
    from tldw_Server_API.app.core.config import Settings
    from tldw_Server_API.app.core.Embeddings.worker_orchestrator import Orchestrator, Pool

    orchestrator = Orchestrator(Settings(tldw_data_dir=tmp_path, embeddings_workers_min=1), (STAGE,))  # type: ignore[call-arg]
    pool = Pool(STAGE)
    stats = {"state": "draining", "backlog": 500, "oldest_pending_idle_seconds": 0.0, "handled": 0}
    orchestrator._tend(pool, stats)
    assert pool.processes == []
    spawned: list[str] = []
    orchestrator._spawn = lambda stage: spawned.append(stage) or object()  # type: ignore[assignment,method-assign,func-returns-value]
    orchestrator._tend(pool, {**stats, "state": "running", "backlog": 0})
    assert spawned == [STAGE]


def test_empty_sees_stream_entries_and_delayed_retries(redis_prefix: tuple[str, str]) -> None:
    """`_empty` is False while a stream holds an entry or the delayed set a member, True otherwise."""

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        await ensure_groups(redis, names, [STAGE])
        worker = make_worker(redis, url, names, "W")
        assert await worker._empty() is True
        for priority in ("high", "normal", "low"):
            entry_id = await redis.xadd(names.stream(STAGE, priority), BAD_FIELDS)
            assert await worker._empty() is False
            await redis.xdel(names.stream(STAGE, priority), entry_id)
            assert await worker._empty() is True
        await redis.xadd(names.stream(STAGE), BAD_FIELDS)
        await worker._read()                                   # pending, not waiting: still not empty
        assert await worker._empty() is False
        await redis.delete(names.stream(STAGE))
        await ensure_groups(redis, names, [STAGE])
        assert await worker._empty() is True
        await redis.zadd(names.delayed(STAGE), {b"member": time.time() + 3600})
        assert await worker._empty() is False
        await redis.delete(names.delayed(STAGE))
        assert await worker._empty() is True

    run_scenario(redis_prefix, scenario)


def test_a_burst_worker_on_empty_streams_returns(redis_prefix: tuple[str, str]) -> None:
    """`run()` of a burst-mode worker ends by itself once every stream is empty, removing its heartbeat."""

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        worker = make_worker(redis, url, names, "burst", burst=True)
        started = time.monotonic()
        await asyncio.wait_for(worker.run(), timeout=5)
        assert time.monotonic() - started < 5
        assert await redis.exists(names.heartbeat("burst")) == 0
        assert worker.handled == 0

    run_scenario(redis_prefix, scenario)


def test_a_burst_worker_drains_undecodable_entries_then_returns(redis_prefix: tuple[str, str]) -> None:
    """A burst worker handles what waits (here: dead-letters it) and then exits."""

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        await ensure_groups(redis, names, [STAGE])
        ids = ["5-1", "5-2"]                     # distinct: ids are unique per stream only
        for priority, entry_id in zip(("low", "normal"), ids, strict=True):
            await redis.xadd(names.stream(STAGE, priority), BAD_FIELDS, id=entry_id)
        worker = make_worker(redis, url, names, "burst", burst=True)
        await asyncio.wait_for(worker.run(), timeout=5)
        assert sorted(e["original_id"] for e in await dlq_entries(redis, names)) == sorted(ids)
        assert await worker._empty() is True

    run_scenario(redis_prefix, scenario)


def test_high_priority_is_read_first(redis_prefix: tuple[str, str]) -> None:
    """With one entry in each of low, normal and high, the first `_read` returns the high one."""

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        await ensure_groups(redis, names, [STAGE])
        ids = {}
        for priority in ("low", "normal", "high"):     # high added last: not first by id
            ids[priority] = _s(await redis.xadd(names.stream(STAGE, priority), BAD_FIELDS))
        worker = make_worker(redis, url, names, "W")
        read = []
        for _ in range(3):
            entries = await worker._read()
            assert len(entries) == 1
            read.append(entries[0][:2])
        assert read[0] == (names.stream(STAGE, "high"), ids["high"])
        assert read == [(names.stream(STAGE, p), ids[p]) for p in ("high", "normal", "low")]
        assert await worker._read() == []

    run_scenario(redis_prefix, scenario)


# --- backpressure -------------------------------------------------------------------------------


def pipeline_config(url: str, prefix: str, depth: int = 2) -> PipelineConfig:
    return PipelineConfig(mode="redis", redis_url=url, prefix=prefix, max_retries=3, lease_seconds=30.0,
                          workers_min=1, workers_max=2, backpressure_depth=depth, backpressure_age_seconds=3600.0)


def chunking_fields(job_id: str) -> dict[str, bytes | str]:
    from tldw_Server_API.app.core.Embeddings.queue_schemas import ChunkingMessage

    message = ChunkingMessage(job_id=job_id, user_id="alice", media_id=7, content_hash="h", created_at=NOW,
                              chunk_options=ChunkOptions(method="sentences", size=50, overlap=5),
                              embedding_model="m", embedding_provider="onnx", content="Some text.")
    return to_fields(message)


def test_backpressure_raises_overloaded_past_the_depth(redis_prefix: tuple[str, str]) -> None:
    """`check_capacity` raises Overloaded (with retry_after) once a stage's backlog passes the depth."""

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        executor = RedisExecutor(redis, pipeline_config(url, names.prefix, depth=2), jobs=None)  # type: ignore[arg-type]
        await executor.start()
        stream = names.stream("chunking")
        await executor.check_capacity()
        for i in range(2):
            await redis.xadd(stream, chunking_fields(f"job_{i}"))
        await executor.check_capacity()                 # backlog 2: not past the depth
        await redis.xadd(stream, chunking_fields("job_2"))
        with pytest.raises(Overloaded) as raised:
            await executor.check_capacity()
        assert raised.value.retry_after is not None and raised.value.retry_after > 0
        assert "chunking" in str(raised.value)
        # pending entries count too: a worker holding two of them does not relieve the stage
        await redis.xreadgroup(names.group("chunking"), "W", {stream: ">"}, count=2)
        with pytest.raises(Overloaded):
            await executor.check_capacity()

    run_scenario(redis_prefix, scenario)


def test_backpressure_counts_waiting_entries_after_an_out_of_order_ack(redis_prefix: tuple[str, str]) -> None:
    """The backlog still counts waiting entries when a later entry was acked and deleted first
    (two workers, the second finished first: Redis then reports the group's lag as unknown)."""

    async def scenario(redis: Any, names: StreamNames, url: str) -> None:
        executor = RedisExecutor(redis, pipeline_config(url, names.prefix, depth=3), jobs=None)  # type: ignore[arg-type]
        await executor.start()
        stream, group = names.stream("chunking"), names.group("chunking")
        for i in range(5):
            await redis.xadd(stream, chunking_fields(f"job_{i}"))
        await redis.xreadgroup(group, "slow", {stream: ">"}, count=1)
        [[_, [(second, _)]]] = await redis.xreadgroup(group, "fast", {stream: ">"}, count=1)
        async with redis.pipeline(transaction=True) as pipe:   # what StageWorker._forward does
            pipe.xack(stream, group, second)
            pipe.xdel(stream, second)
            await pipe.execute()
        # 3 entries never delivered + 1 pending = 4 > depth 3
        with pytest.raises(Overloaded):
            await executor.check_capacity()

    run_scenario(redis_prefix, scenario)


# --- the worker outcome table -------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "outcome"), [
    (Overloaded("busy", retry_after=3), WorkerOutcome.RETRY),
    (ServiceUnavailable("down"), WorkerOutcome.RETRY),
    (RateLimited("slow down", retry_after=1), WorkerOutcome.RETRY),
    (ProviderTransientError("upstream 503"), WorkerOutcome.RETRY),
    (InvalidInput("bad"), WorkerOutcome.DEAD_LETTER),
    (NotFound("gone"), WorkerOutcome.DEAD_LETTER),
    (ProviderError("garbage"), WorkerOutcome.DEAD_LETTER),
    (UpstreamRejectedRequest("413"), WorkerOutcome.DEAD_LETTER),
    (RuntimeError("driver hiccup"), WorkerOutcome.RETRY),
])
def test_worker_outcome_table(exc: BaseException, outcome: str) -> None:
    """Transient errors retry, permanent ones dead-letter, anything not a TLDWError retries."""
    assert worker_outcome(exc) == outcome
