"""Builds the per-user vector stores from `StorageConfig`: Chroma (default; the in-memory stub when
`chroma_force_stub`) or pgvector (`pgvector_dsn` required). Built once in the app lifespan.

`for_user(user_id)` hands out a cached, cheap store bound to that user; the factory owns the
shared resources (Chroma clients, the PostgreSQL pool) and releases them in `close()`. Adapters,
and with them chromadb or psycopg, are imported only when chosen.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tldw_Server_API.app.core.config import StorageConfig
from tldw_Server_API.app.core.Embeddings.ChromaDB_Library import validate_user_id
from tldw_Server_API.app.core.errors import InvalidInput
from tldw_Server_API.app.core.RAG.vector_stores.base import VectorStore

PROBE_MAX_USERS = 256


class VectorStoreFactory(Protocol):
    kind: str

    def for_user(self, user_id: object) -> VectorStore: ...

    def probe(self) -> None:
        """Raise when the store cannot serve reads and writes now (health checks)."""

    def close(self) -> None: ...


class _CachingFactory:
    """Caches one store per user; `_make` builds it, `_release` frees the shared resources."""

    kind = "abstract"

    def __init__(self, make: Callable[[str], VectorStore], release: Callable[[], None]) -> None:
        self._make = make
        self._release = release
        self._stores: dict[str, VectorStore] = {}
        self._lock = threading.Lock()

    def for_user(self, user_id: object) -> VectorStore:
        uid = validate_user_id(user_id)
        with self._lock:
            store = self._stores.get(uid)
            if store is None:
                store = self._stores[uid] = self._make(uid)
            return store

    def close(self) -> None:
        with self._lock:
            self._stores.clear()
        self._release()


class ChromaVectorStoreFactory(_CachingFactory):
    """Per-user Chroma clients under `<data_dir>/users/<id>/chroma`, or of a Chroma server (one
    database per user), or in memory with the stub."""

    def __init__(self, data_dir: Path | str, force_stub: bool = False, *, url: str | None = None,
                 token: str | None = None) -> None:
        from tldw_Server_API.app.core.Embeddings.ChromaDB_Library import ChromaClientManager
        from tldw_Server_API.app.core.RAG.vector_stores.chroma_store import ChromaVectorStore

        self.clients = ChromaClientManager(Path(data_dir), force_stub=force_stub, url=url, token=token)
        self.kind = "chroma-stub" if force_stub else "chroma-server" if url else "chroma"
        clients = self.clients

        def make(uid: str) -> VectorStore:
            return ChromaVectorStore(lambda: clients.client(uid))

        super().__init__(make, clients.close_all)

    def probe(self) -> None:
        """Every user's Chroma folder (at most `PROBE_MAX_USERS`) and the folder new users get must
        take a file: Chroma fails its writes, and even its first read, when they cannot."""
        if self.clients.force_stub:
            return
        if self.clients.url is not None:
            self.clients.heartbeat()
            return
        users = self.clients.data_dir / "users"
        users.mkdir(parents=True, exist_ok=True)
        folders = [users, *sorted(users.glob("*/chroma"))[:PROBE_MAX_USERS]]
        for folder in folders:
            probe_file = folder / f".health-{os.getpid()}-{threading.get_ident()}"
            probe_file.write_bytes(b"")
            probe_file.unlink()


class PgVectorStoreFactory(_CachingFactory):
    """All users share one connection pool; each user's collections are their own tables."""

    kind = "pgvector"

    def __init__(self, dsn: str, ef_search: int, *, index_min_rows: int | None = None) -> None:
        from tldw_Server_API.app.core.RAG.vector_stores.pg_connections import PgConnectionPool
        from tldw_Server_API.app.core.RAG.vector_stores.pgvector_store import DEFAULT_INDEX_MIN_ROWS, PgVectorStore

        self.pool = PgConnectionPool(dsn, ef_search)
        pool = self.pool
        min_rows = DEFAULT_INDEX_MIN_ROWS if index_min_rows is None else index_min_rows

        def make(uid: str) -> VectorStore:
            return PgVectorStore(pool, uid, index_min_rows=min_rows)

        super().__init__(make, pool.close)

    def probe(self) -> None:
        with self.pool.connection() as conn:
            conn.execute("SELECT 1")


def create_vector_store_factory(config: StorageConfig) -> VectorStoreFactory:
    """Chroma unless `vector_store_type` is pgvector; the stub replaces Chroma only (never pgvector).
    Connects lazily: an unreachable database shows up per call as `ServiceUnavailable`."""
    if config.vector_store_type == "pgvector":
        if not config.pgvector_dsn:
            raise InvalidInput("RAG__PGVECTOR__DSN is required when RAG__VECTOR_STORE_TYPE is pgvector",
                               param="RAG__PGVECTOR__DSN", code="missing_configuration")
        return PgVectorStoreFactory(config.pgvector_dsn, config.pgvector_ef_search)
    if config.vector_store_type != "chroma":
        raise InvalidInput(f"unknown vector store type {config.vector_store_type!r}", param="RAG__VECTOR_STORE_TYPE")
    return ChromaVectorStoreFactory(config.data_dir, force_stub=config.chroma_force_stub, url=config.chroma_url,
                                    token=config.chroma_token)
