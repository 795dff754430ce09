"""The audit log of operator actions: an append-only table in the jobs DB (SQLite or PostgreSQL,
`JOBS_DB_URL`). Every admin action that changes state (DLQ state changes, requeues and purges,
stage pause/drain/resume, cache clears, breaker resets, job skips and priority bumps, re-embed
schedules, compaction runs, model warmups and downloads) appends one event: who, what, when, the
target, the outcome (`ok` or the error code) and a small detail object. The API boundary records
it (`api/v1/deps.AuditedAdmin`), so no route can forget it; nothing here updates or deletes a row.

May import SQLAlchemy, `_sql_engine` and core errors; no HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Column, Index, MetaData, String, Table, Text, and_, true
from sqlalchemy.engine import RowMapping

from tldw_Server_API.app.core.Embeddings._sql_engine import (
    Clock,
    PageQuery,
    UTCDateTime,
    check_limit,
    engine_for,
    keyset_page,
    new_id,
    transaction,
    utc_now,
)

MAX_PAGE = 500
_metadata = MetaData()
audit_table = Table(
    "embedding_audit_events",
    _metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(255), nullable=False, default=""),
    Column("outcome", String(64), nullable=False),
    Column("detail", Text, nullable=False, default="{}"),
    Index("ix_embedding_audit_created", "created_at", "id"),
    Index("ix_embedding_audit_action", "action", "created_at"),
    Index("ix_embedding_audit_user", "user_id", "created_at"),
)


@dataclass(frozen=True)
class AuditEvent:
    id: str
    created_at: datetime
    user_id: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: RowMapping) -> AuditEvent:
        return cls(row["id"], row["created_at"], row["user_id"], row["action"], row["target"], row["outcome"],
                   orjson.loads(row["detail"] or "{}"))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "object": "embedding.audit_event", "created_at": int(self.created_at.timestamp()),
                "user_id": self.user_id, "action": self.action, "target": self.target, "outcome": self.outcome,
                "detail": self.detail}


class AuditLog:
    """Append and read audit events. Thread-safe; one shared engine per URL."""

    def __init__(self, url: str, *, clock: Clock = utc_now) -> None:
        self.engine = engine_for(url)
        self._clock = clock
        _metadata.create_all(self.engine)

    def record(self, user_id: str, action: str, target: str = "", outcome: str = "ok",
               detail: Mapping[str, Any] | None = None) -> AuditEvent:
        event = AuditEvent(new_id("audit"), self._clock(), user_id, action[:64], target[:255], outcome[:64],
                           dict(detail or {}))
        with transaction(self.engine) as conn:
            conn.execute(audit_table.insert().values(
                id=event.id, created_at=event.created_at, user_id=event.user_id, action=event.action,
                target=event.target, outcome=event.outcome, detail=orjson.dumps(event.detail, default=str).decode()))
        return event

    def page(self, *, limit: int = 50, after: str | None = None, before: str | None = None, order: str = "desc",
             action: str | None = None, user_id: str | None = None) -> tuple[list[AuditEvent], bool]:
        """Newest first by default; filtered by action and/or acting user; OpenAI keyset paging."""
        check_limit(limit, MAX_PAGE)
        c = audit_table.c
        scope = and_(true(), *([c.action == action] if action else []), *([c.user_id == user_id] if user_id else []))
        query = PageQuery(limit=limit, order=order, after=after, before=before)  # type: ignore[arg-type]
        with transaction(self.engine) as conn:
            rows, has_more = keyset_page(conn, audit_table, scope, query)
        return [AuditEvent.from_row(row) for row in rows], has_more
