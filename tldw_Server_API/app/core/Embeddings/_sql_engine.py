"""The one place that builds SQLAlchemy engines for the jobs / vector-store metadata databases.

Leaf module: imports SQLAlchemy and the standard library only (the psycopg driver loads lazily,
inside SQLAlchemy, when a PostgreSQL URL is first connected). Holds no policy about jobs or
stores: engines (SQLite pragmas, pool settings), a UTC datetime column type, id minting,
transactions and OpenAI-style keyset paging shared by the three `*_db.py` modules.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Column, DateTime, Table, and_, create_engine, event, or_, select
from sqlalchemy.engine import Connection, Engine, RowMapping, make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from tldw_Server_API.app.core.errors import InvalidInput

SQLITE_BUSY_TIMEOUT_MS = 30_000
Clock = Callable[[], datetime]
Order = Literal["asc", "desc"]

_engines: dict[str, Engine] = {}
_sqlite_locks: dict[int, threading.RLock] = {}
_registry_lock = threading.Lock()


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """`<prefix>_<32 hex>`: random, unguessable, URL-safe."""
    return f"{prefix}_{uuid.uuid4().hex}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalize_url(url: str) -> str:
    """`postgresql://` -> `postgresql+psycopg://` (psycopg 3 is the driver we ship)."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_engine(url: str) -> Engine:
    database = make_url(url).database
    if not database or database == ":memory:":
        # One shared connection, or every thread would see its own empty database.
        return create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def engine_for(url: str) -> Engine:
    """The process-wide engine of `url` (built on first use; thread-safe)."""
    key = normalize_url(url)
    with _registry_lock:
        engine = _engines.get(key)
        if engine is None:
            if make_url(key).get_backend_name() == "sqlite":
                engine = _sqlite_engine(key)
                _sqlite_locks[id(engine)] = threading.RLock()
            else:
                engine = create_engine(key, pool_pre_ping=True, pool_size=5, max_overflow=10, pool_recycle=1800)
            _engines[key] = engine
        return engine


def dispose_engine(url: str) -> None:
    """Close the pooled connections of `url`'s engine and forget it (shutdown, tests)."""
    with _registry_lock:
        engine = _engines.pop(normalize_url(url), None)
        if engine is not None:
            _sqlite_locks.pop(id(engine), None)
    if engine is not None:
        engine.dispose()


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction. On SQLite, writers in this process take turns on a lock: SQLite admits one
    writer anyway, and queueing here beats SQLITE_BUSY retries; other processes wait on busy_timeout."""
    lock = _sqlite_locks.get(id(engine))
    if lock is None:
        with engine.begin() as conn:
            yield conn
        return
    with lock, engine.begin() as conn:
        yield conn


MAX_PAGE_SIZE = 100   # OpenAI list pages: 1-100 items


def ping(engine: Engine) -> None:
    """One round trip to the database (health probes); raises what the driver raises."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")


def check_limit(limit: int, maximum: int) -> None:
    if not 1 <= limit <= maximum:
        raise InvalidInput(f"limit must be between 1 and {maximum}", param="limit")


@dataclass(frozen=True)
class PageQuery:
    """One OpenAI-style list page: `limit` items after/before the cursor ids, by (created_at, id)."""

    limit: int
    order: Order = "desc"
    after: str | None = None
    before: str | None = None


def _cursor_filter(
    conn: Connection, table: Table, scope: ColumnElement[bool], cursor_id: str, later: bool, param: str
) -> ColumnElement[bool]:
    """Rows strictly later (or earlier) than the cursor row in (created_at, id) order."""
    created, ident = table.c.created_at, table.c.id
    row = conn.execute(select(created).where(scope, ident == cursor_id)).first()
    if row is None:
        raise InvalidInput(f"unknown cursor {param}={cursor_id!r}", param=param)
    if later:
        return or_(created > row[0], and_(created == row[0], ident > cursor_id))
    return or_(created < row[0], and_(created == row[0], ident < cursor_id))


def keyset_page(
    conn: Connection, table: Table, scope: ColumnElement[bool], page: PageQuery
) -> tuple[list[RowMapping], bool]:
    """Rows of `table` matching `scope` ordered by (created_at, id) in `page.order`, strictly after
    `page.after` and before `page.before` (ids in the same scope), and whether more lie beyond.

    With only `before`, the page is the `limit` rows just before it and `has_more` says whether
    rows lie further back; otherwise the page starts right after `after` (or at the start)."""
    if page.order not in ("asc", "desc"):
        raise InvalidInput("order must be 'asc' or 'desc'", param="order")
    ascending = page.order == "asc"
    conditions: list[ColumnElement[bool]] = [scope]
    if page.after is not None:
        conditions.append(_cursor_filter(conn, table, scope, page.after, later=ascending, param="after"))
    if page.before is not None:
        conditions.append(_cursor_filter(conn, table, scope, page.before, later=not ascending, param="before"))
    backwards = page.before is not None and page.after is None
    forward_asc = ascending != backwards
    keys: Sequence[Column[Any]] = (table.c.created_at, table.c.id)
    ordering = [key.asc() if forward_asc else key.desc() for key in keys]
    query = select(table).where(*conditions).order_by(*ordering).limit(page.limit + 1)
    rows = list(conn.execute(query).mappings())
    has_more = len(rows) > page.limit
    rows = rows[: page.limit]
    if backwards:
        rows.reverse()
    return rows, has_more


def add_missing_columns(engine: Engine, table: Any) -> None:
    """Upgrade a table made by an earlier version in place: add the columns it lacks (each new
    column is nullable or has a server default, so existing rows stay valid)."""
    from sqlalchemy import inspect, text

    present = {column["name"] for column in inspect(engine).get_columns(table.name)}
    missing = [column for column in table.columns if column.name not in present]
    if not missing:
        return
    with transaction(engine) as conn:
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            rule = "NULL" if column.nullable else f"NOT NULL DEFAULT {column.server_default.arg}"
            conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind} {rule}"))
