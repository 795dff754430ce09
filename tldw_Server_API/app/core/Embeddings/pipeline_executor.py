"""The executor protocol the job manager talks to, and its embedded implementation.

An executor runs a job's messages through the stage handlers (`workers/stages.py`) until none is
left. Two implement it: `EmbeddedExecutor` here (asyncio tasks in the server process, no Redis;
the default) and the Redis Streams one (`workers/redis_executor.py`). Job state lives in the jobs
DB, written by the stages themselves, so the API reads it the same way whichever runs.

`EmbeddedExecutor` keeps one priority queue of messages of every stage (high before normal before
low; later stages first, so started jobs finish before new ones start), retries transient errors
with exponential backoff and jitter, fails the job on a permanent error or when retries run out
(`core/errors.py`'s worker outcome table), and on start resumes every job a stopped or killed
process left unfinished from its stored spec. An operator may pause, drain or resume a stage (its
messages are held, never dropped). A job whose messages are all handled but which is
not finished (a chunk overwritten by a superseding job) is run again, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from typing import Protocol

from loguru import logger

from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import TERMINAL_STATES, JobRecord, JobStatus
from tldw_Server_API.app.core.Embeddings.queue_schemas import ChunkingMessage, PipelineMessage, decode
from tldw_Server_API.app.core.Embeddings.retries import step_retry_delay
from tldw_Server_API.app.core.Embeddings.stage_context import StageContext
from tldw_Server_API.app.core.Embeddings.workers.stages import STAGES, run_stage
from tldw_Server_API.app.core.errors import Overloaded, TLDWError, WorkerOutcome, worker_outcome

PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}
STAGE_RANK = {stage: len(STAGES) - i for i, stage in enumerate(STAGES)}   # storage first
MAX_RERUNS = 2


class PipelineExecutor(Protocol):
    """What the job manager needs of an executor."""

    async def start(self) -> None: ...

    async def enqueue(self, message: ChunkingMessage) -> None:
        """Accept a new job's first message (Overloaded when it cannot take more now)."""

    async def check_capacity(self, jobs: int = 1) -> None:
        """Raise Overloaded (with `retry_after`) when `jobs` more would not be taken now."""

    async def wait_idle(self) -> None: ...

    async def control(self, stage: str, action: str) -> str:
        """Pause, drain or resume a stage (`worker_config.STAGE_ACTIONS`); returns its new state:
        `paused` (nothing new is taken, messages wait), `draining` (work goes on until the stage has
        nothing waiting, then it is paused), `running`."""

    async def summary(self) -> dict[str, object]:
        """What an operator watches: the mode and, per stage, what waits and who works on it."""

    async def resubmit(self, job: JobRecord) -> bool:
        """Run a (reopened) job again from its stored spec; False when it has none."""

    async def reprioritize(self, job_id: str, priority: str) -> int:
        """Give the job's waiting messages another priority; returns how many moved."""

    async def broadcast_breaker_reset(self, provider: str) -> None:
        """Make every process running stages reset its circuit breaker of `provider`."""

    async def aclose(self) -> None: ...


def spec_message(job: JobRecord) -> ChunkingMessage | None:
    """The chunking message a job was created with (None for a job of an earlier version)."""
    if not job.spec:
        return None
    message = decode(job.spec)
    return message if isinstance(message, ChunkingMessage) else None


class EmbeddedExecutor:
    """In-process asyncio workers over one priority queue. Used from the event loop only."""

    def __init__(self, context: StageContext, *, concurrency: int, queue_size: int, max_retries: int = 3,
                 retry_base: float = 0.5, retry_cap: float = 30.0) -> None:
        self._context = context
        self._concurrency = concurrency
        self._queue_size = queue_size
        self._max_retries = max_retries
        self._retry_base, self._retry_cap = retry_base, retry_cap
        self._queue: asyncio.PriorityQueue[tuple[int, int, int, PipelineMessage]] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._outstanding: dict[str, int] = {}     # job id -> its messages queued, running or waiting a retry
        self._reruns: dict[str, int] = {}
        self._waiting: Counter[str] = Counter()    # queued messages per stage
        self._workers: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._checks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._states: dict[str, str] = dict.fromkeys(STAGES, "running")
        self._held: dict[str, list[PipelineMessage]] = {stage: [] for stage in STAGES}   # of paused stages

    async def start(self) -> None:
        """Resume the jobs a stopped or killed process left unfinished, then start the workers."""
        jobs = await asyncio.to_thread(self._context.jobs.resumable_jobs)
        resumed = 0
        now = self._context.clock()
        for job in jobs:
            if job.held(now):
                continue     # scheduled for later: the re-embed consumer starts it
            message = spec_message(job)
            if message is None:
                await asyncio.to_thread(self._context.jobs.transition, job.job_id, JobStatus.FAILED,
                                        error="interrupted (created by an earlier version; start it again)")
                continue
            self._put(message)
            resumed += 1
        if resumed:
            logger.warning("media embeddings: resuming {} interrupted job(s)", resumed)
        self._workers = [asyncio.create_task(self._worker(), name=f"embedded-pipeline-{i}")
                         for i in range(self._concurrency)]

    async def check_capacity(self, jobs: int = 1) -> None:
        if len(self._outstanding) + jobs > self._queue_size:
            raise Overloaded("the embedding job queue is full; retry later", retry_after=5)

    async def enqueue(self, message: ChunkingMessage) -> None:
        await self.check_capacity()
        self._put(message)

    async def control(self, stage: str, action: str) -> str:
        if stage not in self._states:
            raise ValueError(f"unknown stage {stage!r}")
        if action not in ("pause", "drain", "resume"):
            raise ValueError(f"unknown stage action {action!r}")
        if action == "pause":
            self._states[stage] = "paused"
            return "paused"
        held, self._held[stage] = self._held[stage], []
        for message in held:         # what a pause held waits again: a drain works it off too
            self._put(message, new=False)
        draining = action == "drain"
        self._states[stage] = "running" if not draining else "draining" if self._waiting[stage] else "paused"
        return self._states[stage]

    async def summary(self) -> dict[str, object]:
        stages = [{"stage": stage, "lag": self._waiting[stage] + len(self._held[stage]), "state": self._states[stage]}
                  for stage in STAGES]
        return {"mode": "embedded", "jobs_in_flight": len(self._outstanding), "workers": len(self._workers),
                "retries_waiting": len(self._timers), "stages": stages}

    async def resubmit(self, job: JobRecord) -> bool:
        message = spec_message(job)
        if message is None:
            return False
        self._put(message)
        return True

    async def reprioritize(self, job_id: str, priority: str) -> int:
        """Re-key the job's queued and held messages with the new priority."""
        entries = []
        while not self._queue.empty():
            entries.append(self._queue.get_nowait())
        moved = 0
        for *key, message in entries:
            if message.job_id == job_id and message.priority != priority:
                message = message.model_copy(update={"priority": priority})
                key = [PRIORITY_RANK[priority], *key[1:]]
                moved += 1
            self._queue.put_nowait((key[0], key[1], key[2], message))
        for stage, held in self._held.items():
            self._held[stage] = [m.model_copy(update={"priority": priority}) if m.job_id == job_id else m
                                 for m in held]
        return moved

    async def broadcast_breaker_reset(self, provider: str) -> None:
        """One process: the service's own breaker is the one the stages use (reset by the caller)."""

    async def wait_idle(self) -> None:
        """Until no job has a message left (tests and graceful drains)."""
        while self._outstanding:
            self._idle.clear()
            await self._idle.wait()

    async def aclose(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for task in [*self._workers, *self._checks]:
            task.cancel()
        for task in [*self._workers, *self._checks]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []

    # --- internals -------------------------------------------------------------------------------
    def _put(self, message: PipelineMessage, *, new: bool = True) -> None:
        if new:
            self._outstanding[message.job_id] = self._outstanding.get(message.job_id, 0) + 1
            self._idle.clear()
        key = (PRIORITY_RANK[message.priority], STAGE_RANK[message.stage], next(self._seq))
        self._waiting[message.stage] += 1
        self._queue.put_nowait((*key, message))

    def _done(self, message: PipelineMessage) -> None:
        left = self._outstanding.get(message.job_id, 1) - 1
        if left > 0:
            self._outstanding[message.job_id] = left
            return
        self._outstanding[message.job_id] = 1      # its final check is still outstanding
        task = asyncio.get_running_loop().create_task(self._after_job(message.job_id))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _after_job(self, job_id: str) -> None:
        """Every message of the job is handled: it should be terminal. If not, run it again."""
        try:
            job = await asyncio.to_thread(self._context.jobs.get_by_id, job_id)
            if job.status not in TERMINAL_STATES:
                runs = self._reruns.get(job_id, 0)
                message = spec_message(job)
                if message is not None and runs < MAX_RERUNS:
                    self._reruns[job_id] = runs + 1
                    logger.info("media embeddings: job {} unfinished after its messages; running it again", job_id)
                    self._put(message, new=False)
                    return
                await asyncio.to_thread(self._context.jobs.transition, job_id, JobStatus.FAILED,
                                        error="the job could not store every chunk")
        except TLDWError as exc:
            logger.warning("media embeddings: job {} could not be checked: {}", job_id, exc.message)
        self._reruns.pop(job_id, None)
        self._outstanding.pop(job_id, None)
        if not self._outstanding:
            self._idle.set()

    async def _worker(self) -> None:
        while True:
            *_, message = await self._queue.get()
            stage = message.stage
            self._waiting[stage] -= 1
            if self._states[stage] == "paused":
                self._held[stage].append(message)    # back in the queue on resume
                continue
            if self._states[stage] == "draining" and not self._waiting[stage]:
                self._states[stage] = "paused"       # this was the last one waiting
            try:
                for following in await run_stage(message, self._context):
                    self._put(following)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad message must never stop the worker
                if self._retry_later(message, exc):
                    continue
                await self._fail(message.job_id, exc)
            self._done(message)

    def _retry_later(self, message: PipelineMessage, exc: BaseException) -> bool:
        if worker_outcome(exc) != WorkerOutcome.RETRY or message.attempt >= self._max_retries:
            return False
        delay = step_retry_delay(message.attempt + 1, exc, self._retry_base, self._retry_cap)
        logger.info("media embeddings: job {} {} step failed ({}); retry {} in {:.1f}s", message.job_id,
                    message.stage, type(exc).__name__, message.attempt + 1, delay)
        retry = message.model_copy(update={"attempt": message.attempt + 1})
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            self._put(retry, new=False)

        timer = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(timer)
        return True

    async def _fail(self, job_id: str, exc: BaseException) -> None:
        if not isinstance(exc, TLDWError):
            logger.opt(exception=exc).error("media embeddings: job {} failed", job_id)
        with contextlib.suppress(TLDWError):
            await asyncio.to_thread(self._context.jobs.transition, job_id, JobStatus.FAILED, error=exc)
