"""Background batches over a real SQLite batches DB: outcomes recorded (completed, failed with the
first error, crashed, cancelled), `after` always run, cooperative stop with exact counts, hard
cancel per store and on shutdown (even before a task's first step), and waiting with a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tldw_Server_API.app.core.Embeddings._sql_engine import dispose_engine
from tldw_Server_API.app.core.Embeddings.vector_store_batch_tasks import INTERNAL_ERROR, BatchTally, BatchTasks
from tldw_Server_API.app.core.Embeddings.vector_store_batches_db import VectorStoreBatchesDB
from tldw_Server_API.app.core.errors import InvalidInput

USER = "u1"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[VectorStoreBatchesDB]:
    url = f"sqlite:///{tmp_path}/batches.db"
    yield VectorStoreBatchesDB(url)
    dispose_engine(url)


class Steps:
    """A job of `total` one-item steps; each step waits for `gate` when given, and counts in the DB."""

    def __init__(self, db: VectorStoreBatchesDB, batch_id: str, total: int, gate: asyncio.Event | None = None,
                 failing: frozenset[int] = frozenset()) -> None:
        self.db, self.batch_id, self.total, self.gate, self.failing = db, batch_id, total, gate, failing
        self.started = asyncio.Event()
        self.after_calls = 0

    async def run(self, stop: asyncio.Event) -> BatchTally:
        tally = BatchTally()
        for i in range(self.total):
            if stop.is_set():
                break
            self.started.set()
            if self.gate is not None:
                await self.gate.wait()
                self.gate.clear()
            step = BatchTally()
            if i in self.failing:
                step.fail(1, InvalidInput(f"item {i} is bad"))
            else:
                step.completed = 1
            tally.add(step)
            self.db.add_counts(USER, self.batch_id, completed=step.completed, failed=step.failed)
        return tally

    async def after(self) -> None:
        self.after_calls += 1


def test_completed_and_failed_batches_are_recorded(db: VectorStoreBatchesDB) -> None:
    async def scenario() -> None:
        tasks = BatchTasks(db)
        good, bad = db.create(USER, "vs_1", total=3), db.create(USER, "vs_1", total=3)
        good_job, bad_job = Steps(db, good.id, 3), Steps(db, bad.id, 3, failing=frozenset({1}))
        tasks.start(USER, "vs_1", good.id, good_job.run, good_job.after)
        tasks.start(USER, "vs_1", bad.id, bad_job.run, bad_job.after)
        assert await tasks.wait(good.id, 10) and await tasks.wait(bad.id, 10)
        assert good_job.after_calls == bad_job.after_calls == 1
        await tasks.aclose()

    asyncio.run(scenario())
    records = {r.status: r for r in db.list_for_store(USER, "vs_1")[0]}
    assert (records["completed"].completed, records["completed"].failed, records["completed"].error) == (3, 0, None)
    assert (records["failed"].completed, records["failed"].failed) == (2, 1)
    assert records["failed"].error == "item 1 is bad"


def test_a_crashing_job_ends_failed_and_still_runs_after(db: VectorStoreBatchesDB) -> None:
    calls: list[str] = []

    async def crash(_: asyncio.Event) -> BatchTally:
        raise RuntimeError("disk on fire")

    async def after() -> None:
        calls.append("after")

    async def scenario() -> str:
        tasks = BatchTasks(db)
        batch = db.create(USER, "vs_1", total=1)
        tasks.start(USER, "vs_1", batch.id, crash, after)
        assert await tasks.wait(batch.id, 10)
        return batch.id

    batch_id = asyncio.run(scenario())
    record = db.get(USER, batch_id)
    assert record.status == "failed" and record.error == INTERNAL_ERROR  # the details stay in the log
    assert calls == ["after"]


def test_stop_ends_after_the_current_step_with_exact_counts(db: VectorStoreBatchesDB) -> None:
    async def scenario() -> str:
        tasks = BatchTasks(db)
        batch = db.create(USER, "vs_1", total=10)
        gate = asyncio.Event()
        job = Steps(db, batch.id, 10, gate=gate)
        tasks.start(USER, "vs_1", batch.id, job.run, job.after)
        await job.started.wait()
        stopping = asyncio.create_task(tasks.stop(batch.id))
        await asyncio.sleep(0)  # let stop() set the flag while step 0 waits at its gate
        gate.set()              # step 0 finishes; the job sees the flag before step 1
        await stopping
        assert job.after_calls == 1
        return batch.id

    record = db.get(USER, asyncio.run(scenario()))
    assert record.status == "cancelled" and (record.completed, record.failed, record.total) == (1, 0, 10)


def test_cancel_store_and_shutdown_cancel_outright(db: VectorStoreBatchesDB) -> None:
    async def scenario() -> tuple[str, str, str]:
        tasks = BatchTasks(db)
        blocked = asyncio.Event()  # never set: these jobs only end by cancellation
        one, two = db.create(USER, "vs_1", total=5), db.create(USER, "vs_2", total=5)
        job_one, job_two = Steps(db, one.id, 5, gate=blocked), Steps(db, two.id, 5, gate=blocked)
        tasks.start(USER, "vs_1", one.id, job_one.run, job_one.after)
        tasks.start(USER, "vs_2", two.id, job_two.run, job_two.after)
        await job_one.started.wait()
        await tasks.cancel_store("vs_1")
        assert await tasks.wait(one.id, 0) and not await tasks.wait(two.id, 0.01)
        unstarted = db.create(USER, "vs_2", total=5)
        job_three = Steps(db, unstarted.id, 5)
        tasks.start(USER, "vs_2", unstarted.id, job_three.run, job_three.after)
        await tasks.aclose()  # no await in between: the third task is cancelled before its first step
        assert not job_three.started.is_set()
        return one.id, two.id, unstarted.id

    for batch_id in asyncio.run(scenario()):
        record = db.get(USER, batch_id)
        assert record.status == "cancelled" and record.completed == 0


def test_wait_on_an_unknown_batch_returns_at_once(db: VectorStoreBatchesDB) -> None:
    assert asyncio.run(BatchTasks(db).wait("vsb_nothing", 0))
