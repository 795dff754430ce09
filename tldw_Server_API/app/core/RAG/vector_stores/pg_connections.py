"""`PgConnectionPool`: a small bounded pool of psycopg 3 connections to the pgvector database.

The first connection bootstraps the schema (`CREATE EXTENSION vector` when missing, the collection
registry); every connection gets `register_vector` and the session's `hnsw.ef_search`. Imports
psycopg and pgvector (only the pgvector adapter imports this module). Connections are autocommit:
callers open `conn.transaction()` for multi-statement work. A broken connection is discarded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from pgvector.psycopg import register_vector

from tldw_Server_API.app.core.errors import ServiceUnavailable

REGISTRY_TABLE = "tldw_vector_collections"
_BOOTSTRAP_LOCK_KEY = 7_310_412_020  # advisory lock: one process bootstraps at a time
_REGISTRY_DDL = f"""
CREATE TABLE IF NOT EXISTS {REGISTRY_TABLE} (
    user_id    text        NOT NULL,
    name       text        NOT NULL,
    table_name text        NOT NULL UNIQUE,
    dimension  integer     NOT NULL,
    metric     text        NOT NULL DEFAULT 'cosine',
    indexed    boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, name)
)"""


class PgConnectionPool:
    """At most `max_size` connections; a caller waits up to `acquire_timeout_s` for a free one."""

    def __init__(self, dsn: str, ef_search: int = 100, *, max_size: int = 8, acquire_timeout_s: float = 30.0,
                 connect_timeout_s: int = 10) -> None:
        self.dsn = dsn
        self.ef_search = ef_search
        self.max_size = max_size
        self.acquire_timeout_s = acquire_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[psycopg.Connection[Any]] = []
        self._size = 0
        self._closed = False
        self._bootstrapped = False
        self._cond = threading.Condition()
        self._bootstrap_lock = threading.Lock()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """Borrow a connection; database outages surface as `ServiceUnavailable` (retryable)."""
        conn = self._acquire()
        try:
            yield conn
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable("the vector database is unavailable", retry_after=1.0) from exc
        finally:
            self._release(conn)

    def _acquire(self) -> psycopg.Connection[Any]:
        deadline = time.monotonic() + self.acquire_timeout_s
        with self._cond:
            while True:
                if self._closed:
                    raise ServiceUnavailable("the vector store is closed")
                if self._idle:
                    return self._idle.pop()
                if self._size < self.max_size:
                    self._size += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServiceUnavailable("no free vector database connection", retry_after=1.0)
                self._cond.wait(remaining)
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self.connect_timeout_s)
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable("the vector database is unavailable", retry_after=1.0) from exc
        try:
            self._bootstrap(conn)
            register_vector(conn)
            conn.execute("SELECT set_config('hnsw.ef_search', %s, false)", (str(self.ef_search),))
        except BaseException:
            conn.close()
            raise
        return conn

    def _bootstrap(self, conn: psycopg.Connection[Any]) -> None:
        with self._bootstrap_lock:
            if self._bootstrapped:
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_BOOTSTRAP_LOCK_KEY,))
                if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                conn.execute(_REGISTRY_DDL)
            self._bootstrapped = True

    def _release(self, conn: psycopg.Connection[Any]) -> None:
        usable = not conn.closed and not conn.broken
        if usable and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.rollback()
            except psycopg.Error:
                usable = False
        with self._cond:
            if usable and not self._closed:
                self._idle.append(conn)
            else:
                self._size -= 1
                conn.close()
            self._cond.notify()

    def close(self) -> None:
        """Close idle connections now; borrowed ones close when they come back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.close()
