"""Background batches of the vector stores: each batch's job runs as an asyncio task that this
class tracks, and its end (completed, failed or cancelled, with the error) is recorded in
`VectorStoreBatchesDB`. Jobs stop between steps when asked (exact counts) and are cancelled
outright on shutdown. Imports asyncio, loguru, the batches DB and core errors; no HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from loguru import logger

from tldw_Server_API.app.core.Embeddings.vector_store_batches_db import VectorStoreBatchesDB
from tldw_Server_API.app.core.errors import Conflict, NotFound, TLDWError

INTERNAL_ERROR = "internal error while processing the batch"


@dataclass
class BatchTally:
    """What a job did: items completed and failed, and the first failure's message."""

    completed: int = 0
    failed: int = 0
    error: str | None = None

    def fail(self, count: int, error: BaseException) -> None:
        self.failed += count
        if self.error is None:
            self.error = str(getattr(error, "message", None) or type(error).__name__)

    def add(self, step: BatchTally) -> None:
        self.completed += step.completed
        self.failed += step.failed
        self.error = self.error or step.error


BatchJob = Callable[[asyncio.Event], Awaitable[BatchTally]]   # returns early once the event is set
AfterBatch = Callable[[], Awaitable[None]]


@dataclass
class _Running:
    user_id: str
    store_id: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)   # set once the task has ended
    task: asyncio.Task[None] | None = None


class BatchTasks:
    """The running batches of this process, by batch id. Used from the event loop only."""

    def __init__(self, batches: VectorStoreBatchesDB) -> None:
        self._batches = batches
        self._running: dict[str, _Running] = {}

    def start(self, user_id: str, store_id: str, batch_id: str, job: BatchJob, after: AfterBatch) -> None:
        """Run `job` in the background, then record its outcome, then await `after` (whatever happened)."""
        running = _Running(user_id, store_id)
        running.task = asyncio.create_task(self._run(running, batch_id, job, after), name=f"vs-batch-{batch_id}")
        self._running[batch_id] = running

        def forget(_: asyncio.Task[None]) -> None:
            self._running.pop(batch_id, None)
            running.done.set()

        running.task.add_done_callback(forget)

    async def stop(self, batch_id: str) -> None:
        """Ask a running batch to stop after its current step and wait until it has."""
        running = self._running.get(batch_id)
        if running is not None:
            running.stop.set()
            await running.done.wait()

    async def cancel_store(self, store_id: str) -> None:
        """Cancel every running batch of a store (being deleted) and wait until they have ended."""
        tasks = {r.task for r in self._running.values() if r.store_id == store_id and r.task is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def wait(self, batch_id: str, timeout: float | None = None) -> bool:
        """Wait until a batch has ended; False on timeout, True at once when it is not running here."""
        running = self._running.get(batch_id)
        if running is None:
            return True
        try:
            await asyncio.wait_for(running.done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Cancel every running batch, wait for them, and make sure each is recorded `cancelled`
        (a task cancelled before its first step never ran its own handler)."""
        running = list(self._running.items())
        tasks = {item.task for _, item in running if item.task is not None}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for batch_id, item in running:
            await self._record(partial(self._batches.cancel, item.user_id, batch_id))

    async def _run(self, running: _Running, batch_id: str, job: BatchJob, after: AfterBatch) -> None:
        user_id = running.user_id
        try:
            tally = await job(running.stop)
            if running.stop.is_set():
                await self._record(partial(self._batches.cancel, user_id, batch_id))
            else:
                status = "failed" if tally.failed else "completed"
                await self._record(partial(self._batches.update, user_id, batch_id, status=status, error=tally.error))
        except asyncio.CancelledError:
            await self._record(partial(self._batches.cancel, user_id, batch_id))
            raise
        except Exception as exc:  # noqa: BLE001 - a batch records its failure; the server goes on
            logger.opt(exception=exc).warning("vector store batch {} failed", batch_id)
            error = exc if isinstance(exc, TLDWError) else INTERNAL_ERROR  # details go to the log only
            await self._record(partial(self._batches.update, user_id, batch_id, status="failed", error=error))
        finally:
            try:
                await after()
            except NotFound:
                pass  # the store was deleted meanwhile
            except Exception as exc:  # noqa: BLE001 - the store's counts are refreshed by its next write
                logger.warning("vector store batch {}: after-batch step failed: {}", batch_id, exc)

    @staticmethod
    async def _record(write: Callable[[], object]) -> None:
        try:
            await asyncio.to_thread(write)
        except (Conflict, NotFound):
            pass  # cancelled, or its store deleted, while it ran: that outcome stands
