"""Jobs: the pure state machine (property-tested), the DB against a reference model of it, CAS
transitions racing cancel, per-user isolation, progress counts, tier allowances (daily chunk
quota and concurrent-job cap, raced by threads) and error sanitising. Every DB test runs on
SQLite and on PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, text
from support import SteppingClock

from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    ChunkQuota,
    JobsDB,
    JobStatus,
    can_transition,
    compute_progress,
    sanitize_error,
)
from tldw_Server_API.app.core.errors import InvalidInput, NotFound, ProviderError, QuotaExceeded, RateLimited

PIPELINE = [JobStatus.QUEUED, JobStatus.CHUNKING, JobStatus.EMBEDDING, JobStatus.STORING, JobStatus.COMPLETED]
STATES = list(JobStatus)
DB_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def new_job(db: JobsDB, user: str = "alice", media_id: int = 1) -> str:
    return db.create_job(user, media_id, embedding_model="m", embedding_provider="huggingface",
                         chunk_method="words", chunk_size=100, chunk_overlap=10).job_id


def run_to(db: JobsDB, job_id: str, target: JobStatus) -> None:
    for state in PIPELINE[1 : PIPELINE.index(target) + 1]:
        assert db.transition(job_id, state)


# --- the pure state machine ------------------------------------------------------------------
def test_the_happy_path_and_its_exits() -> None:
    for old, new in zip(PIPELINE, PIPELINE[1:], strict=False):
        assert can_transition(old, new)
    for state in ACTIVE_STATES:
        assert can_transition(state, JobStatus.FAILED) and can_transition(state, JobStatus.CANCELLED)
    assert not can_transition(JobStatus.QUEUED, JobStatus.EMBEDDING)
    assert not can_transition(JobStatus.EMBEDDING, JobStatus.CHUNKING)
    assert not any(can_transition(state, state) for state in STATES)


@given(st.lists(st.sampled_from(STATES), max_size=30))
def test_random_walks_never_leave_a_terminal_state_nor_skip(moves: list[JobStatus]) -> None:
    state = JobStatus.QUEUED
    for new in moves:
        if not can_transition(state, new):
            continue
        assert state not in TERMINAL_STATES
        if new not in (JobStatus.FAILED, JobStatus.CANCELLED):
            assert PIPELINE.index(new) == PIPELINE.index(state) + 1
        state = new
    if state in TERMINAL_STATES:
        assert not any(can_transition(state, new) for new in STATES)


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 10_000))
def test_progress_is_a_bounded_percentage(total: int, processed: int, stored: int) -> None:
    value = compute_progress(total, processed, stored)
    assert 0.0 <= value <= 100.0
    if total and processed == stored == total:
        assert value == 100.0


# --- sanitising errors ---------------------------------------------------------------------------
segment = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", min_size=1, max_size=12)
unix_paths = st.lists(segment, min_size=2, max_size=5).map(lambda parts: "/" + "/".join(parts))
windows_paths = st.lists(segment, min_size=1, max_size=4).map(lambda parts: "C:\\" + "\\".join(parts))
secret = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=10, max_size=40)
leaks = st.one_of(
    unix_paths,
    windows_paths,
    secret.map(lambda s: f"sk-{s}"),
    secret.map(lambda s: f"postgresql://user:{s}@db.internal:5432/prod"),
)


@given(leaks, st.sampled_from(["{}", "cannot open {} (errno 2)", "failed at '{}'", "x={}\nnext line"]))
def test_sanitize_error_drops_paths_urls_and_keys(leak: str, template: str) -> None:
    message = sanitize_error(OSError(template.format(leak)))
    assert leak not in message
    assert message.startswith("OSError") and "\n" not in message and len(message) <= 300


@given(secret, st.sampled_from(["password={}", "api_key: {}", "Authorization: Bearer {}", "token='{}'", "key={}"]))
def test_sanitize_error_drops_secret_values(value: str, template: str) -> None:
    assume(value not in "upstream said " + template.format(""))   # e.g. "Authorizat": the message's own words
    message = sanitize_error(ProviderError("upstream said " + template.format(value)))
    assert value not in message
    assert message.startswith("ProviderError: upstream said")


def test_sanitize_error_drops_tracebacks_and_bounds_length() -> None:
    exc = RuntimeError('boom\nTraceback (most recent call last):\n  File "/srv/app/x.py", line 3\n' + "y" * 5000)
    message = sanitize_error(exc)
    assert message == "RuntimeError: boom"
    assert len(sanitize_error(ValueError("word " * 1000))) <= 300
    assert sanitize_error(KeyError()) == "KeyError"


# --- the database ---------------------------------------------------------------------------------
def test_create_and_read_back(jobs_db_url: str) -> None:
    clock = SteppingClock()
    db = JobsDB(jobs_db_url, clock=clock)
    job = db.create_job("alice", 7, embedding_model="m", embedding_provider="onnx", chunk_method="sentences",
                        chunk_size=50, chunk_overlap=5, priority="high", content_hash="abc")
    assert job.job_id.startswith("job_") and job.status == JobStatus.QUEUED
    assert (job.media_id, job.priority, job.chunk_size, job.content_hash) == (7, "high", 50, "abc")
    assert job.created_at == clock.now and job.started_at is None and job.progress == 0.0
    assert db.get_job("alice", job.job_id) == job
    assert db.get_status(job.job_id) == JobStatus.QUEUED
    with pytest.raises(InvalidInput):
        db.create_job("alice", 7, embedding_model="m", embedding_provider="onnx", chunk_method="words",
                      chunk_size=10, chunk_overlap=10)
    with pytest.raises(InvalidInput):
        db.create_job("alice", 7, embedding_model="m", embedding_provider="onnx", chunk_method="words",
                      chunk_size=10, chunk_overlap=0, priority="urgent")


def test_other_users_never_see_a_job(jobs_db_url: str) -> None:
    db = JobsDB(jobs_db_url)
    job_id = new_job(db, "alice")
    with pytest.raises(NotFound):
        db.get_job("bob", job_id)
    with pytest.raises(NotFound):
        db.cancel("bob", job_id)
    assert db.get_job("alice", job_id).status == JobStatus.QUEUED
    assert db.list_jobs("bob") == ([], 0)
    assert db.latest_job_for_media("bob", 1) is None
    with pytest.raises(NotFound):
        db.get_job("alice", "job_missing")


def test_many_jobs_are_read_in_one_query_per_500_ids_and_only_the_callers(jobs_db_url: str) -> None:
    """`get_jobs`: what a listing of many store files reads for their statuses, without a query
    per file; another user's and unknown ids are left out."""
    db = JobsDB(jobs_db_url)
    mine = [new_job(db, "alice", media_id=i) for i in range(3)]
    theirs = new_job(db, "bob")
    run_to(db, mine[1], JobStatus.EMBEDDING)
    selects: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        found = db.get_jobs("alice", [*mine, theirs, "job_missing", mine[0]])
        assert len(selects) == 1
        assert set(found) == set(mine) and found[mine[1]].status == JobStatus.EMBEDDING
        selects.clear()
        assert set(db.get_jobs("alice", [*mine, *(f"job_{i}" for i in range(1000))])) == set(mine)
        assert len(selects) == 3                           # 1,003 ids: three queries of <= 500
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert db.get_jobs("alice", []) == {}


@DB_SETTINGS
@given(st.lists(st.sampled_from(STATES), max_size=12))
def test_transitions_follow_the_pure_machine(jobs_db_url: str, moves: list[JobStatus]) -> None:
    db = JobsDB(jobs_db_url)
    job_id = new_job(db, f"user-{uuid.uuid4().hex[:8]}")
    state = JobStatus.QUEUED
    for new in moves:
        if state in TERMINAL_STATES:
            assert db.transition(job_id, new) is False
        elif can_transition(state, new) or new == state:
            assert db.transition(job_id, new) is True
            state = new
        else:
            with pytest.raises(InvalidInput):
                db.transition(job_id, new)
        assert db.get_status(job_id) == state


def test_transition_sets_times_counts_and_a_sanitised_error(jobs_db_url: str) -> None:
    clock = SteppingClock()
    db = JobsDB(jobs_db_url, clock=clock)
    job_id = new_job(db)
    clock.advance()
    assert db.transition(job_id, JobStatus.CHUNKING)
    started = clock.now
    clock.advance()
    assert db.transition(job_id, JobStatus.EMBEDDING, total_chunks=8)
    job = db.get_job("alice", job_id)
    assert (job.started_at, job.updated_at, job.total_chunks, job.completed_at) == (started, clock.now, 8, None)
    clock.advance()
    assert db.transition(job_id, JobStatus.FAILED, error=OSError("cannot read /home/alice/secret.txt"))
    job = db.get_job("alice", job_id)
    assert job.completed_at == clock.now and job.error is not None
    assert job.error.startswith("OSError: cannot read") and "/home" not in job.error
    with pytest.raises(NotFound):
        db.transition("job_missing", JobStatus.CHUNKING)


def test_a_cancel_wins_over_the_next_transition(jobs_db_url: str) -> None:
    db = JobsDB(jobs_db_url)
    job_id = new_job(db)
    run_to(db, job_id, JobStatus.EMBEDDING)
    assert db.cancel("alice", job_id).status == JobStatus.CANCELLED
    assert db.transition(job_id, JobStatus.STORING) is False
    assert db.transition(job_id, JobStatus.FAILED, error="late") is False
    assert db.update_progress(job_id, processed=3) is False
    job = db.get_job("alice", job_id)
    assert (job.status, job.error, job.processed_chunks) == (JobStatus.CANCELLED, None, 0)


def test_cancelling_a_finished_job_is_a_no_op(jobs_db_url: str) -> None:
    db = JobsDB(jobs_db_url)
    job_id = new_job(db)
    run_to(db, job_id, JobStatus.COMPLETED)
    before = db.get_job("alice", job_id)
    assert db.cancel("alice", job_id) == before


def race_worker_against_cancel(db: JobsDB) -> None:
    """A worker walks a job to completion while another thread cancels it, both released at once."""
    job_id = new_job(db)
    barrier = threading.Barrier(2)
    worker_results: list[bool] = []
    cancelled: list[JobStatus] = []

    def worker() -> None:
        barrier.wait()
        for state in PIPELINE[1:]:
            worker_results.append(db.transition(job_id, state))
            if not worker_results[-1]:
                return

    def canceller() -> None:
        barrier.wait()
        cancelled.append(db.cancel("alice", job_id).status)

    threads = [threading.Thread(target=worker), threading.Thread(target=canceller)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = db.get_status(job_id)
    assert cancelled == [final]
    if final == JobStatus.COMPLETED:
        assert worker_results == [True] * 4
    else:
        assert final == JobStatus.CANCELLED and worker_results[-1] is False


def test_cancel_racing_a_worker_leaves_one_consistent_winner(jobs_db_url: str) -> None:
    db = JobsDB(jobs_db_url)
    for _ in range(10):
        race_worker_against_cancel(db)


def test_progress_counts_and_atomic_increments(jobs_db_url: str) -> None:
    db = JobsDB(jobs_db_url)
    job_id = new_job(db)
    run_to(db, job_id, JobStatus.EMBEDDING)
    assert db.update_progress(job_id, total=200, processed=50)
    job = db.get_job("alice", job_id)
    assert (job.total_chunks, job.processed_chunks, job.stored_chunks) == (200, 50, 0)
    assert job.progress == pytest.approx(compute_progress(200, 50, 0))

    def add() -> None:
        for _ in range(25):
            assert db.add_progress(job_id, processed=1, stored=2)

    threads = [threading.Thread(target=add) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    job = db.get_job("alice", job_id)
    assert (job.processed_chunks, job.stored_chunks) == (150, 200)
    assert job.progress == pytest.approx(compute_progress(200, 150, 200))
    assert db.transition(job_id, JobStatus.STORING) and db.transition(job_id, JobStatus.COMPLETED)
    assert db.get_job("alice", job_id).progress == 100.0
    with pytest.raises(InvalidInput):
        db.update_progress(job_id, processed=-1)
    with pytest.raises(NotFound):
        db.update_progress("job_missing", processed=1)


def test_listing_paging_filters_and_latest(jobs_db_url: str) -> None:
    clock = SteppingClock()
    db = JobsDB(jobs_db_url, clock=clock)
    ids = []
    for i in range(7):
        ids.append(new_job(db, media_id=i % 2))
        if i != 3:  # two jobs share a timestamp: creation order still decides
            clock.advance()
    new_job(db, "bob")
    items, total = db.list_jobs("alice", limit=3, offset=0)
    rest, _ = db.list_jobs("alice", limit=10, offset=3)
    assert total == 7 and [job.job_id for job in items + rest] == ids[::-1]
    run_to(db, ids[0], JobStatus.CHUNKING)
    chunking, total = db.list_jobs("alice", status=JobStatus.CHUNKING)
    assert total == 1 and chunking[0].job_id == ids[0]
    latest = db.latest_job_for_media("alice", 0)
    assert latest is not None and latest.job_id == ids[6]
    assert db.count_active("alice") == 7
    assert db.count_created_since("alice", clock.now - timedelta(seconds=2)) == 2
    with pytest.raises(InvalidInput):
        db.list_jobs("alice", limit=0)
    with pytest.raises(InvalidInput):
        db.list_jobs("alice", status="bogus")  # type: ignore[arg-type]


def test_engines_are_shared_and_sqlite_uses_wal(jobs_db_url: str) -> None:
    first, second = JobsDB(jobs_db_url), JobsDB(jobs_db_url)
    assert first.engine is second.engine
    if first.engine.dialect.name == "sqlite":
        with first.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000


def test_a_jobs_table_of_an_earlier_version_gains_the_new_columns(tmp_path) -> None:   # type: ignore[no-untyped-def]
    import sqlite3

    path = tmp_path / "old_jobs.db"
    with sqlite3.connect(path) as conn:   # the table as it was before `truncated_chunks`
        conn.execute(
            "CREATE TABLE embedding_jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id VARCHAR(64) NOT NULL UNIQUE,"
            " user_id VARCHAR(64) NOT NULL, media_id INTEGER NOT NULL, status VARCHAR(16) NOT NULL,"
            " priority VARCHAR(8) NOT NULL, progress FLOAT NOT NULL, total_chunks INTEGER NOT NULL,"
            " processed_chunks INTEGER NOT NULL, stored_chunks INTEGER NOT NULL, embedding_model VARCHAR(255) NOT NULL,"
            " embedding_provider VARCHAR(64) NOT NULL, chunk_method VARCHAR(32) NOT NULL, chunk_size INTEGER NOT NULL,"
            " chunk_overlap INTEGER NOT NULL, content_hash VARCHAR(128), error TEXT, created_at DATETIME NOT NULL,"
            " started_at DATETIME, updated_at DATETIME NOT NULL, completed_at DATETIME)")
        conn.execute(
            "INSERT INTO embedding_jobs (job_id, user_id, media_id, status, priority, progress, total_chunks,"
            " processed_chunks, stored_chunks, embedding_model, embedding_provider, chunk_method, chunk_size,"
            " chunk_overlap, created_at, updated_at) VALUES ('job_old', 'u', 1, 'completed', 'normal', 100, 3, 3, 3,"
            " 'm', 'huggingface', 'words', 1000, 200, '2026-01-01 00:00:00', '2026-01-01 00:00:00')")
    db = JobsDB(f"sqlite:///{path}")
    old = db.get_job("u", "job_old")
    assert old.truncated_chunks == 0 and old.warning is None and old.chunk_size == 1000
    new = db.create_job("u", 2, embedding_model="m", embedding_provider="huggingface", chunk_method="words",
                        chunk_size=10, chunk_overlap=0)
    assert db.transition(new.job_id, JobStatus.CHUNKING) and db.transition(new.job_id, JobStatus.EMBEDDING,
                                                                            total_chunks=4)
    assert db.add_progress(new.job_id, processed=4, truncated=3)
    record = db.get_job("u", new.job_id)
    assert record.truncated_chunks == 3 and "3 of 4 chunks" in (record.warning or "")


# --- tier allowances ------------------------------------------------------------------------------------
def test_the_daily_chunk_quota_is_decided_with_the_total_and_counts_what_ended_jobs_embedded(
    jobs_db_url: str,
) -> None:
    clock = SteppingClock()
    db = JobsDB(jobs_db_url, clock=clock)
    day = clock.now - timedelta(hours=1)
    quota = ChunkQuota("alice", 10, day)
    done, failed, cancelled, over = (new_job(db, media_id=i) for i in range(4))
    assert db.advance(done, JobStatus.EMBEDDING, total_chunks=4, quota=quota)
    assert db.advance(done, JobStatus.EMBEDDING, total_chunks=4, quota=quota)   # a redelivery: not counted twice
    assert db.advance(failed, JobStatus.EMBEDDING, total_chunks=5, quota=quota)
    assert db.chunks_used_since("alice", day) == 9
    assert db.record_embedded(failed, 0, chunks=2)
    assert db.transition(failed, JobStatus.FAILED, error="boom")
    assert db.chunks_used_since("alice", day) == 6          # a failed job counts what it embedded
    assert db.advance(cancelled, JobStatus.EMBEDDING, total_chunks=3, quota=quota)
    db.cancel("alice", cancelled)
    assert db.chunks_used_since("alice", day) == 6
    with pytest.raises(QuotaExceeded, match="daily chunk quota"):
        db.advance(over, JobStatus.EMBEDDING, total_chunks=5, quota=quota)
    job = db.get_job("alice", over)
    assert job.status == JobStatus.QUEUED and job.total_chunks == 0          # nothing written
    assert db.advance(over, JobStatus.EMBEDDING, total_chunks=4, quota=quota)   # exactly the quota
    assert db.chunks_used_since("alice", day) == 10
    assert db.chunks_used_since("alice", clock.now + timedelta(seconds=1)) == 0   # another day
    assert db.chunks_used_since("bob", day) == 0
    db.cancel("alice", over)
    assert db.advance(over, JobStatus.EMBEDDING, total_chunks=4, quota=quota) is False   # terminal: drop


def test_concurrent_quota_decisions_never_pass_the_quota(jobs_db_url: str) -> None:
    db = JobsDB(jobs_db_url)
    quota = ChunkQuota("alice", 10, db.get_job("alice", new_job(db, media_id=99)).created_at)
    jobs = [new_job(db, media_id=i) for i in range(8)]
    outcomes: list[bool] = []
    barrier = threading.Barrier(len(jobs))

    def reserve(job_id: str) -> None:
        barrier.wait()
        try:
            outcomes.append(db.advance(job_id, JobStatus.EMBEDDING, total_chunks=3, quota=quota))
        except QuotaExceeded:
            outcomes.append(False)

    threads = [threading.Thread(target=reserve, args=(job_id,)) for job_id in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(True) == 3 and db.chunks_used_since("alice", quota.since) == 9


def test_the_concurrent_job_cap_counts_queued_and_running_jobs(jobs_db_url: str) -> None:
    db = JobsDB(jobs_db_url)

    def create(media_id: int) -> str:
        return db.create_job("alice", media_id, embedding_model="m", embedding_provider="onnx", chunk_method="words",
                             chunk_size=10, chunk_overlap=0, max_active=2).job_id

    first, second = create(1), create(2)
    with pytest.raises(RateLimited) as refused:
        create(3)
    assert refused.value.retry_after and "at once (2)" in refused.value.message
    assert db.count_active("alice") == 2
    db.create_job("bob", 1, embedding_model="m", embedding_provider="onnx", chunk_method="words", chunk_size=10,
                  chunk_overlap=0, max_active=2)                       # per user
    run_to(db, first, JobStatus.COMPLETED)
    create(3)                                                          # room again
    db.cancel("alice", second)
    create(4)


def test_a_scheduled_job_is_not_active_until_its_time(jobs_db_url: str) -> None:
    """A held job (not_before in the future) answers for no idempotency key, takes no concurrent
    slot and is released once, at its time, by compare-and-set."""
    from datetime import timedelta

    clock = SteppingClock()
    jobs = JobsDB(jobs_db_url, clock=clock)
    options = {"embedding_model": "m", "embedding_provider": "p", "chunk_method": "tokens", "chunk_size": 100,
               "chunk_overlap": 10}
    held = jobs.create_job("u", 1, **options, idempotency_key="k", not_before=clock.now + timedelta(seconds=60))
    assert jobs.find_active_by_key("u", "k") is None
    jobs.create_job("u", 2, **options, max_active=1)     # the held job takes no slot
    assert jobs.release_due(clock.now) == []
    clock.advance(61)
    assert [j.job_id for j in jobs.release_due(clock.now)] == [held.job_id]
    assert jobs.release_due(clock.now) == []             # released once
    assert jobs.find_active_by_key("u", "k") is not None
