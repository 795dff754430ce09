"""Vector store upsert batches: lifecycle (in_progress -> completed | failed | cancelled, then
frozen), atomic counts from many threads, per-user and per-store isolation, listing by store,
deletion with the store, sanitised errors. SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import SteppingClock

from tldw_Server_API.app.core.Embeddings.vector_store_batches_db import (
    BATCH_STATUSES,
    TERMINAL_BATCH_STATUSES,
    VectorStoreBatchesDB,
    can_transition_batch,
)
from tldw_Server_API.app.core.errors import Conflict, InvalidInput, NotFound


@given(st.sampled_from(BATCH_STATUSES), st.sampled_from(BATCH_STATUSES))
def test_only_in_progress_batches_move_and_only_to_an_end(old: str, new: str) -> None:
    assert can_transition_batch(old, new) == (old == "in_progress" and new in TERMINAL_BATCH_STATUSES)


def test_lifecycle_to_completed_then_frozen(jobs_db_url: str) -> None:
    clock = SteppingClock()
    db = VectorStoreBatchesDB(jobs_db_url, clock=clock)
    batch = db.create("alice", "vs_1", total=10)
    assert batch.id.startswith("vsb_") and (batch.status, batch.total, batch.in_progress) == ("in_progress", 10, 10)
    assert db.get("alice", batch.id) == batch == db.get("alice", batch.id, store_id="vs_1")
    assert db.update("alice", batch.id, completed=6, failed=1).in_progress == 3
    clock.now += timedelta(seconds=3)
    done = db.update("alice", batch.id, status="completed", completed=9)
    assert (done.status, done.completed, done.failed, done.in_progress) == ("completed", 9, 1, 0)
    assert done.completed_at == clock.now
    with pytest.raises(Conflict):
        db.update("alice", batch.id, completed=10)
    with pytest.raises(Conflict):
        db.update("alice", batch.id, status="failed")
    with pytest.raises(Conflict):
        db.add_counts("alice", batch.id, completed=1)
    assert db.update("alice", batch.id, status="completed") == done  # re-stating the end state is a no-op
    assert db.cancel("alice", batch.id) == done


def test_cancel_and_failure(jobs_db_url: str) -> None:
    db = VectorStoreBatchesDB(jobs_db_url)
    cancelled = db.cancel("alice", db.create("alice", "vs_1", total=3).id)
    assert cancelled.status == "cancelled" and cancelled.completed_at is not None
    with pytest.raises(Conflict):
        db.update("alice", cancelled.id, status="completed")
    failed = db.update("alice", db.create("alice", "vs_1").id, status="failed",
                       error=ConnectionError("cannot reach postgresql://app:hunter2hunter2@db/prod"))
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.startswith("ConnectionError: cannot reach") and "hunter2" not in failed.error
    with pytest.raises(InvalidInput):
        db.update("alice", failed.id, status="paused")
    with pytest.raises(InvalidInput):
        db.create("alice", "vs_1", total=-1)


def test_startup_recovery_fails_only_interrupted_batches(jobs_db_url: str) -> None:
    db = VectorStoreBatchesDB(jobs_db_url)
    running = [db.create(user, "vs_1", total=2).id for user in ("alice", "bob")]
    done = db.update("alice", db.create("alice", "vs_1").id, status="completed")
    assert db.fail_interrupted() == 2
    for user, batch_id in zip(("alice", "bob"), running, strict=True):
        failed = db.get(user, batch_id)
        assert (failed.status, failed.error) == ("failed", "interrupted") and failed.completed_at is not None
    assert db.get("alice", done.id) == done and db.fail_interrupted() == 0


def test_other_users_and_stores_never_see_a_batch(jobs_db_url: str) -> None:
    db = VectorStoreBatchesDB(jobs_db_url)
    batch = db.create("alice", "vs_1", total=2)
    for call in (lambda: db.get("bob", batch.id), lambda: db.get("alice", batch.id, store_id="vs_2"),
                 lambda: db.update("bob", batch.id, completed=1), lambda: db.cancel("bob", batch.id),
                 lambda: db.add_counts("bob", batch.id, completed=1)):
        with pytest.raises(NotFound):
            call()
    assert db.list_for_store("bob", "vs_1") == ([], False)
    assert db.delete_for_store("bob", "vs_1") == 0
    assert db.get("alice", batch.id) == batch


def test_counts_add_up_from_many_threads(jobs_db_url: str) -> None:
    db = VectorStoreBatchesDB(jobs_db_url)
    batch = db.create("alice", "vs_1", total=200)

    def add() -> None:
        for _ in range(20):
            db.add_counts("alice", batch.id, completed=2, failed=1)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = db.get("alice", batch.id)
    assert (record.completed, record.failed, record.in_progress) == (160, 80, 0)


def test_listing_by_store_and_deleting_with_the_store(jobs_db_url: str) -> None:
    clock = SteppingClock()
    db = VectorStoreBatchesDB(jobs_db_url, clock=clock)
    ids = []
    for _ in range(5):
        ids.append(db.create("alice", "vs_1").id)
        clock.now += timedelta(seconds=1)
    other = db.create("alice", "vs_2").id
    db.update("alice", ids[1], status="completed")
    page, has_more = db.list_for_store("alice", "vs_1", limit=3)
    rest, more = db.list_for_store("alice", "vs_1", limit=3, after=page[-1].id)
    assert [b.id for b in page + rest] == ids[::-1] and has_more and not more
    ascending, _ = db.list_for_store("alice", "vs_1", order="asc", limit=10)
    assert [b.id for b in ascending] == ids
    completed, _ = db.list_for_store("alice", "vs_1", status="completed")
    assert [b.id for b in completed] == [ids[1]]
    with pytest.raises(InvalidInput):
        db.list_for_store("alice", "vs_1", after=other)  # a cursor from another store
    assert db.delete_for_store("alice", "vs_1") == 5
    assert db.list_for_store("alice", "vs_1") == ([], False)
    assert db.get("alice", other).store_id == "vs_2"
