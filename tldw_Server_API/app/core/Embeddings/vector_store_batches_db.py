"""Batches of vector upserts into an OpenAI-compatible vector store (`vsb_` ids), in SQLAlchemy.

A batch starts `in_progress` and ends `completed`, `failed` or `cancelled`; a finished batch is
frozen (compare-and-set UPDATEs, so a cancel racing the upsert never gets overwritten). Counts
follow OpenAI's `file_counts` (total, completed, failed).
May import SQLAlchemy, `_sql_engine` and core errors; no HTTP, no vector store clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Index, Integer, MetaData, String, Table, Text, delete, select, update
from sqlalchemy.engine import Connection, RowMapping

from tldw_Server_API.app.core.Embeddings._sql_engine import (
    MAX_PAGE_SIZE,
    Clock,
    Order,
    PageQuery,
    UTCDateTime,
    add_missing_columns,
    check_limit,
    engine_for,
    keyset_page,
    new_id,
    transaction,
    utc_now,
)
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import sanitize_error, sanitize_message
from tldw_Server_API.app.core.errors import Conflict, InvalidInput, NotFound

IN_PROGRESS = "in_progress"
BATCH_STATUSES = (IN_PROGRESS, "completed", "failed", "cancelled")
TERMINAL_BATCH_STATUSES = frozenset(BATCH_STATUSES[1:])


def can_transition_batch(old: str, new: str) -> bool:
    """in_progress -> completed | failed | cancelled; finished batches are final."""
    return old == IN_PROGRESS and new in TERMINAL_BATCH_STATUSES


_metadata = MetaData()
batches_table = Table(
    "vector_store_batches",
    _metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("store_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("total", Integer, nullable=False, default=0),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("completed_at", UTCDateTime, nullable=True),
    # What the batch writes (JSON, `vector_store_service`): a restarted server resumes it from here.
    Column("spec", Text, nullable=True),
    Index("ix_vector_store_batches_store", "user_id", "store_id", "created_at", "id"),
)


@dataclass(frozen=True)
class BatchRecord:
    id: str
    user_id: str
    store_id: str
    status: str
    total: int
    completed: int
    failed: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    spec: str | None = field(default=None, repr=False, compare=False)

    @property
    def in_progress(self) -> int:
        """Items neither completed nor failed yet (OpenAI's `file_counts.in_progress`)."""
        return max(0, self.total - self.completed - self.failed) if self.status == IN_PROGRESS else 0

    @classmethod
    def from_row(cls, row: RowMapping) -> BatchRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


def _check_counts(**counts: int | None) -> None:
    for name, value in counts.items():
        if value is not None and value < 0:
            raise InvalidInput(f"{name} must be >= 0", param=name)


class VectorStoreBatchesDB:
    """Upsert batches, scoped per user. Thread-safe; one shared engine per URL."""

    def __init__(self, url: str, *, clock: Clock = utc_now) -> None:
        self.engine = engine_for(url)
        self._clock = clock
        _metadata.create_all(self.engine)
        add_missing_columns(self.engine, batches_table)

    def create(self, user_id: str, store_id: str, *, total: int = 0, spec: str | None = None) -> BatchRecord:
        """A new `in_progress` batch of `total` items (`spec`: what resumes it after a restart)."""
        _check_counts(total=total)
        now = self._clock()
        batch_id = new_id("vsb")
        values = {
            "id": batch_id, "user_id": user_id, "store_id": store_id, "status": IN_PROGRESS, "total": total,
            "completed": 0, "failed": 0, "created_at": now, "updated_at": now, "spec": spec,
        }
        with transaction(self.engine) as conn:
            conn.execute(batches_table.insert().values(**values))
            return self._read(conn, user_id, batch_id)

    def get(self, user_id: str, batch_id: str, store_id: str | None = None) -> BatchRecord:
        """The caller's batch (of `store_id` when given); NotFound otherwise."""
        with transaction(self.engine) as conn:
            record = self._read(conn, user_id, batch_id)
        if store_id is not None and record.store_id != store_id:
            raise NotFound(f"batch {batch_id!r} not found", param="batch_id")
        return record

    def update(
        self,
        user_id: str,
        batch_id: str,
        *,
        status: str | None = None,
        total: int | None = None,
        completed: int | None = None,
        failed: int | None = None,
        error: str | BaseException | None = None,
    ) -> BatchRecord:
        """Set the given fields of an `in_progress` batch (absolute counts; a terminal status
        finishes it). A finished batch is frozen: Conflict for any change, except re-stating its
        status alone, which returns it unchanged. `error` is sanitised before it is stored."""
        _check_counts(total=total, completed=completed, failed=failed)
        if status is not None and status not in BATCH_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(BATCH_STATUSES)}", param="status")
        values: dict[str, Any] = {
            name: value for name, value in (("total", total), ("completed", completed), ("failed", failed))
            if value is not None
        }
        if error is not None:
            values["error"] = sanitize_error(error) if isinstance(error, BaseException) else sanitize_message(error)
        if status is not None and status != IN_PROGRESS:
            values.update(status=status, completed_at=self._clock())
        only_status = not values or set(values) == {"status", "completed_at"}
        return self._update_in_progress(user_id, batch_id, values, status if only_status else None)

    def add_counts(self, user_id: str, batch_id: str, *, completed: int = 0, failed: int = 0) -> BatchRecord:
        """Atomically add to the counts of an `in_progress` batch (Conflict once it is finished)."""
        _check_counts(completed=completed, failed=failed)
        c = batches_table.c
        values = {"completed": c.completed + completed, "failed": c.failed + failed}
        return self._update_in_progress(user_id, batch_id, values, None)

    def cancel(self, user_id: str, batch_id: str) -> BatchRecord:
        """Cancel an `in_progress` batch; a finished one comes back unchanged (idempotent)."""
        try:
            return self.update(user_id, batch_id, status="cancelled")
        except Conflict:
            return self.get(user_id, batch_id)

    def list_for_store(
        self,
        user_id: str,
        store_id: str,
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
        status: str | None = None,
    ) -> tuple[list[BatchRecord], bool]:
        """One OpenAI list page of a store's batches by (created_at, id) and `has_more`."""
        check_limit(limit, MAX_PAGE_SIZE)
        c = batches_table.c
        scope = (c.user_id == user_id) & (c.store_id == store_id)
        if status is not None:
            scope = scope & (c.status == status)
        page = PageQuery(limit=limit, order=order, after=after, before=before)
        with transaction(self.engine) as conn:
            rows, has_more = keyset_page(conn, batches_table, scope, page)
        return [BatchRecord.from_row(row) for row in rows], has_more

    def fail_interrupted(self) -> int:
        """Startup recovery of batches that cannot resume: those a stopped or crashed process left
        `in_progress` without a spec (made by an earlier version) become `failed` ("interrupted"),
        so pollers stop waiting. Returns how many."""
        now = self._clock()
        c = batches_table.c
        with transaction(self.engine) as conn:
            result = conn.execute(
                update(batches_table).where(c.status == IN_PROGRESS, c.spec.is_(None))
                .values(status="failed", error="interrupted", updated_at=now, completed_at=now)
            )
        return int(result.rowcount)

    def claim_for_resume(self, batch: BatchRecord) -> bool:
        """Take a left-over batch to run it again, counts from zero: one compare-and-set on its
        `updated_at`, so of server processes starting together exactly one resumes it."""
        c = batches_table.c
        with transaction(self.engine) as conn:
            result = conn.execute(
                update(batches_table)
                .where(c.id == batch.id, c.status == IN_PROGRESS, c.updated_at == batch.updated_at)
                .values(completed=0, failed=0, updated_at=self._clock())
            )
        return result.rowcount == 1

    def resumable(self) -> list[BatchRecord]:
        """Batches left `in_progress` with a spec, oldest first (start-up resume)."""
        c = batches_table.c
        query = select(batches_table).where(c.status == IN_PROGRESS, c.spec.is_not(None)).order_by(c.created_at)
        with transaction(self.engine) as conn:
            return [BatchRecord.from_row(row) for row in conn.execute(query).mappings().all()]

    def delete_for_store(self, user_id: str, store_id: str) -> int:
        """Forget every batch of a deleted store; returns how many there were."""
        c = batches_table.c
        with transaction(self.engine) as conn:
            result = conn.execute(delete(batches_table).where(c.user_id == user_id, c.store_id == store_id))
        return int(result.rowcount)

    def _update_in_progress(
        self, user_id: str, batch_id: str, values: dict[str, Any], restated: str | None
    ) -> BatchRecord:
        c = batches_table.c
        values["updated_at"] = self._clock()
        with transaction(self.engine) as conn:
            result = conn.execute(
                update(batches_table)
                .where(c.id == batch_id, c.user_id == user_id, c.status == IN_PROGRESS)
                .values(**values)
            )
            record = self._read(conn, user_id, batch_id)
        if result.rowcount == 1 or (restated is not None and record.status == restated):
            return record
        raise Conflict(f"batch {batch_id!r} is already {record.status}", param="batch_id")

    @staticmethod
    def _read(conn: Connection, user_id: str, batch_id: str) -> BatchRecord:
        row = conn.execute(
            select(batches_table).where(batches_table.c.id == batch_id, batches_table.c.user_id == user_id)
        ).mappings().first()
        if row is None:
            raise NotFound(f"batch {batch_id!r} not found", param="batch_id")
        return BatchRecord.from_row(row)
