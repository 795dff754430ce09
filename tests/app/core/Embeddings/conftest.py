"""Fixtures of the Embeddings tests: `jobs_db_url`, a fresh database per test on SQLite and on
PostgreSQL (pgserver), shared by the jobs, vector-store metadata and batches DB tests; and
`redis_prefix`, a real Redis with a unique key prefix removed afterwards (cache and rate limits)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool
from support import require_service

from tldw_Server_API.app.core.Embeddings._sql_engine import dispose_engine


def _pg_url(dsn: str, database: str) -> URL:
    params = {key: str(value) for key, value in conninfo_to_dict(dsn).items()}
    params.pop("dbname", None)
    user, password = params.pop("user", None), params.pop("password", None) or None
    return URL.create("postgresql+psycopg", username=user, password=password, database=database, query=params)


@pytest.fixture(params=["sqlite", "postgres"])
def jobs_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: an SQLite file, or a PostgreSQL database created for this test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/embeddings_jobs.db"
        yield url
        dispose_engine(url)
        return
    try:
        dsn = request.getfixturevalue("pgvector_dsn")
    except pytest.FixtureLookupError:
        require_service("PostgreSQL: the pgvector_dsn fixture (pgserver)")
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(_pg_url(dsn, "postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = _pg_url(dsn, name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        dispose_engine(url)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[tuple[str, str]]:
    """(Redis URL, a unique key prefix); every key under the prefix is deleted afterwards."""
    url = redis_url
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    prefix = f"test:{uuid.uuid4().hex}"
    yield url, prefix
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()
