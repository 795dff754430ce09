"""Media embedding jobs: the pure job state machine, error sanitising, and `JobsDB` (SQLAlchemy).

`JobStatus`, `can_transition`, `compute_progress` and `sanitize_error` are pure. `JobsDB` persists
jobs (SQLite by default, PostgreSQL by URL) and is safe to call from worker threads; every state
change is one compare-and-set UPDATE, so a cancel racing a worker never gets overwritten.
May import SQLAlchemy, `_sql_engine` and core errors; no HTTP, no queues, no environment.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from tldw_Server_API.app.core.Embeddings._sql_engine import (
    Clock,
    UTCDateTime,
    add_missing_columns,
    engine_for,
    new_id,
    transaction,
    utc_now,
)
from tldw_Server_API.app.core.errors import Conflict, InvalidInput, NotFound, QuotaExceeded, RateLimited, TLDWError


class JobStatus(StrEnum):
    QUEUED = "queued"
    CHUNKING = "chunking"
    EMBEDDING = "embedding"
    STORING = "storing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
RUNNING_STATES = frozenset({JobStatus.CHUNKING, JobStatus.EMBEDDING, JobStatus.STORING})
ACTIVE_STATES = RUNNING_STATES | {JobStatus.QUEUED}
PRIORITIES = ("high", "normal", "low")
_NEXT = {
    JobStatus.QUEUED: JobStatus.CHUNKING,
    JobStatus.CHUNKING: JobStatus.EMBEDDING,
    JobStatus.EMBEDDING: JobStatus.STORING,
    JobStatus.STORING: JobStatus.COMPLETED,
}


def can_transition(old: JobStatus, new: JobStatus) -> bool:
    """queued -> chunking -> embedding -> storing -> completed, one step at a time; any active state
    -> failed | cancelled; terminal states are final. A state never moves to itself."""
    if old in TERMINAL_STATES:
        return False
    return new in (JobStatus.FAILED, JobStatus.CANCELLED) or _NEXT.get(old) == new


def sources_of(new: JobStatus) -> frozenset[JobStatus]:
    """The states from which `new` may be entered."""
    return frozenset(old for old in JobStatus if can_transition(old, new))


def compute_progress(total: int, processed: int, stored: int) -> float:
    """Percent done: embedding is the first half of the work, storing the second."""
    if total <= 0:
        return 0.0
    return min(100.0, (processed + stored) * 50.0 / total)


# --- error sanitising (pure) -----------------------------------------------------------------
MAX_ERROR_LENGTH = 300
_TRACEBACK = re.compile(r"Traceback \(most recent call last\).*", re.S)
_BEARER = re.compile(r"(?i)\b(bearer|basic|token)\s+\S+")
_SECRET_VALUE = re.compile(
    r"(?i)\b((?:api[_-]?)?keys?|tokens?|secrets?|passwords?|passwd|pwd|authorization|credentials?|auth|dsn)"
    r"(\s*[=:]\s*)('[^']*'|\"[^\"]*\"|\S+)"
)
_PATHLIKE = re.compile(r"\S*[/\\]\S*")  # any word with a slash: paths, URLs (and their credentials)
_LONG_TOKEN = re.compile(r"[A-Za-z0-9_\-+=.~]{24,}")  # API keys, hashes, base64
_KEY_PREFIX = re.compile(r"\b(?:sk|pk|rk|hf|ghp|xox[abp])[-_]\S+")
_HOME = re.compile(r"~\S*")


def sanitize_message(text: str, max_length: int = MAX_ERROR_LENGTH) -> str:
    """One line, no tracebacks, paths, URLs or secret-looking values, at most `max_length` chars."""
    text = _TRACEBACK.sub(" ", text)
    text = _BEARER.sub(r"\1 <redacted>", text)
    text = _SECRET_VALUE.sub(r"\1\2<redacted>", text)
    text = _PATHLIKE.sub("<path>", text)
    text = _HOME.sub("<path>", text)
    text = _KEY_PREFIX.sub("<redacted>", text)
    text = _LONG_TOKEN.sub("<redacted>", text)
    text = " ".join(text.split())
    if len(text) > max_length:
        text = text[: max_length - 3].rstrip() + "..."
    return text


def sanitize_error(exc: BaseException, max_length: int = MAX_ERROR_LENGTH) -> str:
    """`ClassName: safe short message` for storing and showing to the job's owner."""
    name = type(exc).__name__
    raw = exc.message if isinstance(exc, TLDWError) else str(exc)
    message = sanitize_message(raw, max(0, max_length - len(name) - 2))
    return f"{name}: {message}"[:max_length] if message else name[:max_length]


# --- persistence -------------------------------------------------------------------------------
_metadata = MetaData()
jobs_table = Table(
    "embedding_jobs",
    _metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # creation order, tie-breaker
    Column("job_id", String(64), nullable=False, unique=True),
    Column("user_id", String(64), nullable=False),
    Column("media_id", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", String(8), nullable=False),
    Column("progress", Float, nullable=False, default=0.0),
    Column("total_chunks", Integer, nullable=False, default=0),
    Column("processed_chunks", Integer, nullable=False, default=0),
    Column("stored_chunks", Integer, nullable=False, default=0),
    Column("truncated_chunks", Integer, nullable=False, default=0, server_default="0"),
    Column("embedding_model", String(255), nullable=False),
    Column("embedding_provider", String(64), nullable=False),
    Column("chunk_method", String(32), nullable=False),
    Column("chunk_size", Integer, nullable=False),
    Column("chunk_overlap", Integer, nullable=False),
    Column("content_hash", String(128), nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime, nullable=True),
    # The job's chunking message (queue_schemas JSON): what resumes it after a crash and what the
    # reconciler re-enqueues when Redis lost its streams. NULL for jobs of earlier versions.
    Column("spec", Text, nullable=True),
    Column("idempotency_key", String(128), nullable=True),
    # Chunks whose stored vector was reused (text hash and model unchanged): not sent to the model.
    Column("skipped_chunks", Integer, nullable=False, default=0, server_default="0"),
    # A scheduled job (an operator's re-embed at a time): no executor starts it before this.
    Column("not_before", UTCDateTime, nullable=True),
    Index("ix_embedding_jobs_user_created", "user_id", "created_at"),
    Index("ix_embedding_jobs_user_media", "user_id", "media_id"),
    Index("ix_embedding_jobs_status", "status"),
    Index("ix_embedding_jobs_idempotency", "user_id", "idempotency_key"),
)
# One row per embedded sub-batch of a job: counts each batch once however often its message is
# delivered (the processed and truncated counters are sums over these rows).
parts_table = Table(
    "embedding_job_parts",
    _metadata,
    Column("job_id", String(64), primary_key=True),
    Column("batch_index", Integer, primary_key=True),
    Column("chunks", Integer, nullable=False),
    Column("truncated", Integer, nullable=False),
    Column("skipped", Integer, nullable=False, default=0, server_default="0"),
)


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    user_id: str
    media_id: int
    status: JobStatus
    priority: str
    progress: float
    total_chunks: int
    processed_chunks: int
    stored_chunks: int
    embedding_model: str
    embedding_provider: str
    chunk_method: str
    chunk_size: int
    chunk_overlap: int
    content_hash: str | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    completed_at: datetime | None
    truncated_chunks: int = 0      # chunks longer than the model's window (their tail was not embedded)
    spec: str | None = field(default=None, repr=False, compare=False)   # the encoded chunking message
    idempotency_key: str | None = None
    skipped_chunks: int = 0        # reused stored vectors (unchanged text and model): not embedded again
    not_before: datetime | None = None

    @property
    def embedded_chunks(self) -> int:
        """Chunks this job sent to the model."""
        return max(0, self.processed_chunks - self.skipped_chunks)

    def held(self, now: datetime) -> bool:
        """A scheduled job whose time has not come (executors leave it to the re-embed consumer)."""
        return self.not_before is not None and self.not_before > now

    @property
    def warning(self) -> str | None:
        """What a caller must know about a job that finished with loss: truncated chunks."""
        if not self.truncated_chunks:
            return None
        return (f"{self.truncated_chunks} of {self.total_chunks} chunks were longer than the model's window and "
                "were truncated (their end is not in the vectors): re-embed with chunk_method 'tokens' "
                "(the default), which cuts chunks to fit the model")

    @classmethod
    def from_row(cls, row: RowMapping) -> JobRecord:
        values = {f.name: row[f.name] for f in fields(cls)}
        values["status"] = JobStatus(values["status"])
        return cls(**values)


def day_start(now: datetime) -> datetime:
    """The UTC midnight that starts `now`'s quota day."""
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class ChunkQuota:
    """A user's daily chunk allowance, counted over the jobs created since `since` (a UTC midnight)."""

    user_id: str
    daily_chunks: int
    since: datetime


def _chunks_used(user_id: str, since: datetime, exclude_job: str | None = None) -> Any:
    """SELECT of the chunks a user's jobs created since `since` count against a daily quota."""
    c = jobs_table.c
    ended = c.status.in_([JobStatus.FAILED.value, JobStatus.CANCELLED.value])
    used = func.coalesce(func.sum(case((ended, c.processed_chunks), else_=c.total_chunks)), 0)
    conditions = [c.user_id == user_id, c.created_at >= since]
    if exclude_job is not None:
        conditions.append(c.job_id != exclude_job)
    return select(used).where(*conditions)


def _not_held(now: datetime) -> ColumnElement[bool]:
    """Not a scheduled job waiting for its time (it neither counts as active nor answers for a key)."""
    return or_(jobs_table.c.not_before.is_(None), jobs_table.c.not_before <= now)


def _lock_user(conn: Connection, user_id: str) -> None:
    """Serialise a user's quota decisions until the transaction ends. SQLite needs nothing: its
    writers take turns (`transaction`), and the deciding UPDATE holds the write lock throughout."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(literal(f"jobs-quota:{user_id}")))))


def _progress_sql(total: Any, processed: Any, stored: Any) -> ColumnElement[Any]:
    """`compute_progress` in SQL (same formula; CASE guards the division)."""
    raw = (processed + stored) * literal(50.0) / total
    return case((total <= 0, literal(0.0)), (raw > 100.0, literal(100.0)), else_=raw)


def _check_counts(**counts: int | None) -> None:
    for name, value in counts.items():
        if value is not None and value < 0:
            raise InvalidInput(f"{name} must be >= 0", param=name)


def _error_text(error: str | BaseException | None) -> str | None:
    if error is None:
        return None
    return sanitize_error(error) if isinstance(error, BaseException) else sanitize_message(error)


class JobsDB:
    """Media embedding jobs, scoped per user. Thread-safe; one shared engine per URL."""

    def __init__(self, url: str, *, clock: Clock = utc_now) -> None:
        self.engine = engine_for(url)
        self._clock = clock
        _metadata.create_all(self.engine)
        add_missing_columns(self.engine, jobs_table)
        add_missing_columns(self.engine, parts_table)

    # --- creation and reads -----------------------------------------------------------------
    def create_job(
        self, user_id: str, media_id: int, *, embedding_model: str, embedding_provider: str, chunk_method: str,
        chunk_size: int, chunk_overlap: int, priority: str = "normal", content_hash: str | None = None,
        job_id: str | None = None, spec: str | None = None, idempotency_key: str | None = None,
        max_active: int = 0, not_before: datetime | None = None,
    ) -> JobRecord:
        """A new job in state `queued` (its id made here unless given: the spec may name it).
        `max_active` > 0: RateLimited when the user already has that many queued or running jobs
        (counted in the same transaction as the insert)."""
        if priority not in PRIORITIES:
            raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}", param="priority")
        if chunk_size < 1 or not 0 <= chunk_overlap < chunk_size:
            raise InvalidInput("chunk size must be >= 1 and 0 <= overlap < size", param="chunk_size")
        now = self._clock()
        job_id = job_id or new_id("job")
        values = {
            "job_id": job_id, "user_id": user_id, "media_id": media_id, "status": JobStatus.QUEUED.value,
            "priority": priority, "progress": 0.0, "total_chunks": 0, "processed_chunks": 0,
            "stored_chunks": 0, "embedding_model": embedding_model, "embedding_provider": embedding_provider,
            "chunk_method": chunk_method, "chunk_size": chunk_size, "chunk_overlap": chunk_overlap,
            "content_hash": content_hash, "created_at": now, "updated_at": now, "spec": spec,
            "idempotency_key": idempotency_key, "not_before": not_before,
        }
        with transaction(self.engine) as conn:
            if max_active > 0:
                _lock_user(conn, user_id)
                active = conn.execute(select(func.count()).select_from(jobs_table).where(
                    jobs_table.c.user_id == user_id, _not_held(now),
                    jobs_table.c.status.in_([s.value for s in ACTIVE_STATES]))).scalar_one()
                if active >= max_active:
                    raise RateLimited(f"{active} embedding jobs are already queued or running, the most this "
                                      f"account may run at once ({max_active}); retry when one finishes",
                                      retry_after=5)
            conn.execute(jobs_table.insert().values(**values))
            return self._read(conn, job_id, user_id)

    def get_job(self, user_id: str, job_id: str) -> JobRecord:
        """The caller's job; NotFound for a missing job or another user's."""
        with transaction(self.engine) as conn:
            return self._read(conn, job_id, user_id)

    def get_jobs(self, user_id: str, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        """The caller's jobs among `job_ids`, by id (missing ones and other users' left out): one
        query per 500 ids, for listings that show many jobs' states (vector store file counts)."""
        wanted = list(dict.fromkeys(job_ids))
        found: dict[str, JobRecord] = {}
        with transaction(self.engine) as conn:
            for start in range(0, len(wanted), 500):
                query = select(jobs_table).where(jobs_table.c.user_id == user_id,
                                                 jobs_table.c.job_id.in_(wanted[start:start + 500]))
                found.update((row["job_id"], JobRecord.from_row(row)) for row in conn.execute(query).mappings())
        return found

    def get_by_id(self, job_id: str) -> JobRecord:
        """Unscoped read for executors (no caller to scope by); NotFound for an unknown job."""
        with transaction(self.engine) as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.job_id == job_id)).mappings().first()
        if row is None:
            raise NotFound(f"job {job_id!r} not found", param="job_id")
        return JobRecord.from_row(row)

    def get_status(self, job_id: str) -> JobStatus:
        """Unscoped status read for workers (checking for a cancel between steps)."""
        with transaction(self.engine) as conn:
            return self._status(conn, job_id)

    def list_jobs(
        self, user_id: str, status: JobStatus | None = None, limit: int = 50, offset: int = 0,
        media_id: int | None = None,
    ) -> tuple[list[JobRecord], int]:
        """The caller's jobs, newest first, and how many match in all."""
        if not 1 <= limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000", param="limit")
        if offset < 0:
            raise InvalidInput("offset must be >= 0", param="offset")
        conditions: list[ColumnElement[bool]] = [jobs_table.c.user_id == user_id]
        if status is not None:
            if status not in JobStatus.__members__.values():
                raise InvalidInput(f"unknown job status {str(status)[:32]!r}", param="status")
            conditions.append(jobs_table.c.status == JobStatus(status).value)
        if media_id is not None:
            conditions.append(jobs_table.c.media_id == media_id)
        query = (
            select(jobs_table).where(*conditions)
            .order_by(jobs_table.c.created_at.desc(), jobs_table.c.seq.desc()).limit(limit).offset(offset)
        )
        with transaction(self.engine) as conn:
            total = conn.execute(select(func.count()).select_from(jobs_table).where(*conditions)).scalar_one()
            rows = conn.execute(query).mappings().all()
        return [JobRecord.from_row(row) for row in rows], int(total)

    def latest_job_for_media(self, user_id: str, media_id: int) -> JobRecord | None:
        items, _ = self.list_jobs(user_id, limit=1, media_id=media_id)
        return items[0] if items else None

    def count_active(self, user_id: str) -> int:
        """The caller's queued or running jobs (concurrency limits)."""
        return self._count(user_id, jobs_table.c.status.in_([s.value for s in ACTIVE_STATES]))

    def count_created_since(self, user_id: str, since: datetime) -> int:
        """Jobs the caller created at or after `since`."""
        return self._count(user_id, jobs_table.c.created_at >= since)

    def chunks_used_since(self, user_id: str, since: datetime) -> int:
        """Chunks the caller's jobs created at or after `since` take from a daily quota: a live or
        completed job its total, a failed or cancelled one what it embedded before it ended."""
        with transaction(self.engine) as conn:
            return int(conn.execute(_chunks_used(user_id, since)).scalar_one())

    # --- state changes ------------------------------------------------------------------------
    def transition(
        self, job_id: str, new_status: JobStatus, *, total_chunks: int | None = None,
        processed_chunks: int | None = None, stored_chunks: int | None = None, error: str | BaseException | None = None,
    ) -> bool:
        """Move `job_id` to `new_status` (and set the given fields) in one compare-and-set UPDATE.

        True when applied. Re-entering the current active state is idempotent (True): redelivered
        messages and parallel sub-batches announce the same stage. False when the job already
        reached a terminal state (cancelled meanwhile, or done): the caller should stop.
        InvalidInput when the move is illegal from the job's active state (a skipped stage);
        NotFound for an unknown job. `error` is sanitised before it is stored."""
        new_status = JobStatus(new_status)
        _check_counts(total_chunks=total_chunks, processed_chunks=processed_chunks, stored_chunks=stored_chunks)
        allowed = set(sources_of(new_status))
        if new_status not in TERMINAL_STATES:
            allowed.add(new_status)
        values = self._transition_values(new_status, total_chunks, processed_chunks, stored_chunks, error)
        with transaction(self.engine) as conn:
            result = conn.execute(
                update(jobs_table)
                .where(jobs_table.c.job_id == job_id, jobs_table.c.status.in_([s.value for s in allowed]))
                .values(**values)
            )
            if result.rowcount == 1:
                return True
            current = self._status(conn, job_id)
        if current in TERMINAL_STATES:
            return False
        raise InvalidInput(f"illegal job transition {current.value} -> {new_status.value}", param="status")

    def update_progress(
        self, job_id: str, *, processed: int | None = None, stored: int | None = None, total: int | None = None
    ) -> bool:
        """Set the counts given (absolute values) and recompute progress. False once the job is
        terminal (nothing changes then); NotFound for an unknown job."""
        _check_counts(processed=processed, stored=stored, total=total)
        values = self._count_values(total, processed, stored)
        return self._update_active(job_id, values)

    def add_progress(self, job_id: str, *, processed: int = 0, stored: int = 0, truncated: int = 0) -> bool:
        """Atomically add to the counts (parallel sub-batches); like `update_progress` otherwise."""
        _check_counts(processed=processed, stored=stored, truncated=truncated)
        c = jobs_table.c
        new_processed, new_stored = c.processed_chunks + processed, c.stored_chunks + stored
        values = {
            "processed_chunks": new_processed,
            "stored_chunks": new_stored,
            "truncated_chunks": c.truncated_chunks + truncated,
            "progress": _progress_sql(c.total_chunks, new_processed, new_stored),
        }
        return self._update_active(job_id, values)

    def advance(self, job_id: str, stage: JobStatus, *, total_chunks: int | None = None,
                quota: ChunkQuota | None = None) -> bool:
        """Move a job forward to the running `stage` from any earlier active state (a resumed or
        redelivered stage finds its job anywhere along the way). True while the job is active (it
        is then at `stage` or past it); False once it is terminal: the caller drops its message.

        With a `quota`, the move (which sets `total_chunks`) happens only if the user's other jobs
        of the quota's day plus this total stay within it, decided in the same UPDATE (per-user
        lock on PostgreSQL); else QuotaExceeded."""
        _check_counts(total_chunks=total_chunks)
        order = [JobStatus.QUEUED, *sorted(RUNNING_STATES, key=list(JobStatus).index)]
        earlier = [s.value for s in order[: order.index(JobStatus(stage)) + 1]]
        values = self._transition_values(JobStatus(stage), total_chunks, None, None, None)
        c = jobs_table.c
        with transaction(self.engine) as conn:
            conditions: list[ColumnElement[bool]] = [c.job_id == job_id, c.status.in_(earlier)]
            if quota is not None and quota.daily_chunks > 0 and total_chunks is not None:
                _lock_user(conn, quota.user_id)
                used = _chunks_used(quota.user_id, quota.since, exclude_job=job_id).scalar_subquery()
                conditions.append(used + literal(total_chunks) <= literal(quota.daily_chunks))
            moved = conn.execute(update(jobs_table).where(*conditions).values(**values)).rowcount
            if moved == 1:
                return True
            status = self._status(conn, job_id)
            if status in TERMINAL_STATES:
                return False
            if status.value not in earlier or quota is None or total_chunks is None:
                return True
            used_now = int(conn.execute(_chunks_used(quota.user_id, quota.since, exclude_job=job_id)).scalar_one())
        raise QuotaExceeded(f"this job has {total_chunks} chunks and {used_now} of today's {quota.daily_chunks} "
                            "are already used: the daily chunk quota would be exceeded", param="daily_chunks")

    def record_embedded(self, job_id: str, batch_index: int, *, chunks: int, truncated: int = 0,
                        skipped: int = 0) -> bool:
        """Count one embedded sub-batch exactly once (its first delivery; later ones change
        nothing): its chunks, those truncated, those whose stored vector was reused (`skipped`).
        False once the job is terminal."""
        _check_counts(batch_index=batch_index, chunks=chunks, truncated=truncated, skipped=skipped)
        c = jobs_table.c
        try:
            with transaction(self.engine) as conn:
                conn.execute(parts_table.insert().values(job_id=job_id, batch_index=batch_index, chunks=chunks,
                                                         truncated=truncated, skipped=skipped))
                processed = c.processed_chunks + chunks
                conn.execute(update(jobs_table).where(c.job_id == job_id).values(
                    processed_chunks=processed, truncated_chunks=c.truncated_chunks + truncated,
                    skipped_chunks=c.skipped_chunks + skipped,
                    progress=_progress_sql(c.total_chunks, processed, c.stored_chunks), updated_at=self._clock()))
        except IntegrityError:
            pass   # counted by an earlier delivery
        return self.get_status(job_id) not in TERMINAL_STATES

    def record_stored(self, job_id: str, stored: int) -> bool:
        """Set the stored count read from the vector store and complete the job when it reaches
        the total: one compare-and-set, so of concurrent storage steps exactly one completes it.
        True when this call completed the job."""
        _check_counts(stored=stored)
        c = jobs_table.c
        now = self._clock()
        with transaction(self.engine) as conn:
            conn.execute(update(jobs_table).where(c.job_id == job_id, c.status.in_([s.value for s in ACTIVE_STATES]))
                         .values(stored_chunks=stored, updated_at=now,
                                 progress=_progress_sql(c.total_chunks, c.processed_chunks, literal(stored))))
            done = conn.execute(
                update(jobs_table)
                .where(c.job_id == job_id, c.status == JobStatus.STORING.value, c.total_chunks > 0,
                       c.stored_chunks >= c.total_chunks)
                .values(status=JobStatus.COMPLETED.value, progress=100.0, processed_chunks=c.total_chunks,
                        updated_at=now, completed_at=now)
            ).rowcount
        return done == 1

    def resumable_jobs(self) -> list[JobRecord]:
        """Every job not yet terminal, oldest first, with its spec (start-up resume, reconciler)."""
        query = (select(jobs_table).where(jobs_table.c.status.in_([s.value for s in ACTIVE_STATES]))
                 .order_by(jobs_table.c.seq))
        with transaction(self.engine) as conn:
            return [JobRecord.from_row(row) for row in conn.execute(query).mappings().all()]

    def find_active_by_key(self, user_id: str, idempotency_key: str) -> JobRecord | None:
        """The caller's queued or running job with this idempotency key, if any."""
        c = jobs_table.c
        query = (select(jobs_table).where(c.user_id == user_id, c.idempotency_key == idempotency_key,
                                          c.status.in_([s.value for s in ACTIVE_STATES]), _not_held(self._clock()))
                 .order_by(c.seq.desc()).limit(1))
        with transaction(self.engine) as conn:
            row = conn.execute(query).mappings().first()
        return JobRecord.from_row(row) if row else None

    # --- operator actions (admin: not scoped to a user) --------------------------------------------
    def reopen(self, job_id: str) -> bool:
        """A failed job back to `queued` (its error cleared) for an operator's requeue: one
        compare-and-set, so of two requeues exactly one reopens it. False unless it was failed."""
        now = self._clock()
        c = jobs_table.c
        with transaction(self.engine) as conn:
            moved = conn.execute(update(jobs_table).where(c.job_id == job_id, c.status == JobStatus.FAILED.value)
                                 .values(status=JobStatus.QUEUED.value, error=None, completed_at=None,
                                         updated_at=now)).rowcount
            if moved != 1:
                self._status(conn, job_id)   # NotFound for an unknown job
        return moved == 1

    def skip(self, job_id: str, reason: str = "skipped by an operator") -> JobRecord:
        """Cancel any user's job (an operator skipping it: its messages are dropped by the stages);
        a job already terminal comes back unchanged. NotFound for an unknown job."""
        now = self._clock()
        c = jobs_table.c
        with transaction(self.engine) as conn:
            conn.execute(update(jobs_table).where(c.job_id == job_id, c.status.in_([s.value for s in ACTIVE_STATES]))
                         .values(status=JobStatus.CANCELLED.value, error=sanitize_message(reason), updated_at=now,
                                 completed_at=now))
        return self.get_by_id(job_id)

    def set_priority(self, job_id: str, priority: str) -> JobRecord:
        """Change a job's priority (and its spec's, so a resume or requeue keeps it). Conflict
        once the job is terminal; NotFound for an unknown job."""
        if priority not in PRIORITIES:
            raise InvalidInput(f"priority must be one of {', '.join(PRIORITIES)}", param="priority")
        job = self.get_by_id(job_id)
        if job.status in TERMINAL_STATES:
            raise Conflict(f"job {job_id!r} is {job.status.value}: its priority no longer matters", param="job_id")
        spec = job.spec
        if spec:
            payload = orjson.loads(spec)
            payload["priority"] = priority
            spec = orjson.dumps(payload).decode()
        c = jobs_table.c
        with transaction(self.engine) as conn:
            conn.execute(update(jobs_table).where(c.job_id == job_id)
                         .values(priority=priority, spec=spec, updated_at=self._clock()))
        return self.get_by_id(job_id)

    def release_due(self, now: datetime) -> list[JobRecord]:
        """Scheduled jobs whose time has come, each released (its `not_before` cleared) by one
        compare-and-set, so of several servers exactly one starts it."""
        c = jobs_table.c
        query = select(c.job_id).where(c.status == JobStatus.QUEUED.value, c.not_before.is_not(None),
                                       c.not_before <= now).order_by(c.seq)
        released = []
        with transaction(self.engine) as conn:
            due = [row[0] for row in conn.execute(query)]
        for job_id in due:
            with transaction(self.engine) as conn:
                moved = conn.execute(update(jobs_table).where(c.job_id == job_id, c.not_before.is_not(None))
                                     .values(not_before=None, updated_at=self._clock())).rowcount
            if moved == 1:
                released.append(self.get_by_id(job_id))
        return released

    def find_by_key(self, idempotency_key: str, limit: int = 100) -> list[JobRecord]:
        """Every job (any user, newest first) created under an idempotency key: the ledger lookup."""
        c = jobs_table.c
        query = select(jobs_table).where(c.idempotency_key == idempotency_key).order_by(c.seq.desc()).limit(limit)
        with transaction(self.engine) as conn:
            return [JobRecord.from_row(row) for row in conn.execute(query).mappings().all()]

    def supersede(self, user_id: str, media_id: int, except_job: str | None = None) -> int:
        """Cancel the media's queued and running jobs (a newer job replaces them: two jobs writing
        the same chunk ids would race), but `except_job`. Returns how many."""
        now = self._clock()
        c = jobs_table.c
        with transaction(self.engine) as conn:
            result = conn.execute(
                update(jobs_table)
                .where(c.user_id == user_id, c.media_id == media_id, c.status.in_([s.value for s in ACTIVE_STATES]),
                       c.job_id != (except_job or ""))
                .values(status=JobStatus.CANCELLED.value, error="superseded by a newer job", updated_at=now,
                        completed_at=now)
            )
        return int(result.rowcount)

    def cancel(self, user_id: str, job_id: str) -> JobRecord:
        """Cancel the caller's job and return it. Cancelling a job that already reached a terminal
        state (completed, failed, cancelled) is a no-op: the record comes back unchanged, so the
        caller sees which state won. NotFound for a missing job or another user's."""
        now = self._clock()
        active = [s.value for s in ACTIVE_STATES]
        with transaction(self.engine) as conn:
            conn.execute(
                update(jobs_table)
                .where(jobs_table.c.job_id == job_id, jobs_table.c.user_id == user_id, jobs_table.c.status.in_(active))
                .values(status=JobStatus.CANCELLED.value, updated_at=now, completed_at=now)
            )
        return self.get_job(user_id, job_id)

    # --- helpers ------------------------------------------------------------------------------
    def _transition_values(
        self, new_status: JobStatus, total: int | None, processed: int | None, stored: int | None,
        error: str | BaseException | None,
    ) -> dict[str, Any]:
        now = self._clock()
        values = self._count_values(total, processed, stored)
        values.update(status=new_status.value, updated_at=now)
        if new_status in RUNNING_STATES:
            values["started_at"] = func.coalesce(jobs_table.c.started_at, now)
        if new_status in TERMINAL_STATES:
            values["completed_at"] = now
        if new_status == JobStatus.COMPLETED:
            values["progress"] = 100.0
        if error is not None:
            values["error"] = _error_text(error)
        return values

    def _count_values(self, total: int | None, processed: int | None, stored: int | None) -> dict[str, Any]:
        c = jobs_table.c
        values: dict[str, Any] = {"updated_at": self._clock()}
        given = {"total_chunks": total, "processed_chunks": processed, "stored_chunks": stored}
        values.update({name: value for name, value in given.items() if value is not None})
        if any(value is not None for value in given.values()):
            # SET expressions see the old row, so feed the new values in where given.
            t, p, s = (c[name] if value is None else literal(value) for name, value in given.items())
            values["progress"] = _progress_sql(t, p, s)
        return values

    def _update_active(self, job_id: str, values: dict[str, Any]) -> bool:
        values.setdefault("updated_at", self._clock())
        active = [s.value for s in ACTIVE_STATES]
        with transaction(self.engine) as conn:
            query = update(jobs_table).where(jobs_table.c.job_id == job_id, jobs_table.c.status.in_(active))
            result = conn.execute(query.values(**values))
            if result.rowcount == 1:
                return True
            self._status(conn, job_id)  # NotFound for an unknown job
        return False

    def _count(self, user_id: str, condition: ColumnElement[bool]) -> int:
        query = select(func.count()).select_from(jobs_table).where(jobs_table.c.user_id == user_id, condition)
        with transaction(self.engine) as conn:
            return int(conn.execute(query).scalar_one())

    @staticmethod
    def _status(conn: Connection, job_id: str) -> JobStatus:
        status = conn.execute(select(jobs_table.c.status).where(jobs_table.c.job_id == job_id)).scalar()
        if status is None:
            raise NotFound(f"job {job_id!r} not found", param="job_id")
        return JobStatus(status)

    @staticmethod
    def _read(conn: Connection, job_id: str, user_id: str) -> JobRecord:
        query = select(jobs_table).where(jobs_table.c.job_id == job_id, jobs_table.c.user_id == user_id)
        row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(f"job {job_id!r} not found", param="job_id")
        return JobRecord.from_row(row)
