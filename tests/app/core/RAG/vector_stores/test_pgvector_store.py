"""pgvector specifics beyond the contract: bulk load then HNSW index, the exact fallback for
filters that starve the index, the session's `hnsw.ef_search`, a bounded pool, outages as
`ServiceUnavailable`, and the factory's configuration errors. Real PostgreSQL via pgserver."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from psycopg import sql
from support import make_settings

from tldw_Server_API.app.core.errors import InvalidInput, ServiceUnavailable
from tldw_Server_API.app.core.RAG.vector_stores.factory import PgVectorStoreFactory, create_vector_store_factory
from tldw_Server_API.app.core.RAG.vector_stores.pg_connections import PgConnectionPool
from tldw_Server_API.app.core.RAG.vector_stores.pgvector_store import PgVectorStore, table_name_for


@pytest.fixture
def user() -> str:
    return f"pg{uuid.uuid4().hex[:12]}"


def hnsw_indexes(pool: PgConnectionPool, table: str) -> list[str]:
    with pool.connection() as conn:
        rows = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (table,)).fetchall()
    return [r[0] for r in rows if "hnsw" in r[0]]


@pytest.fixture
def store_factory(pgvector_dsn: str) -> Iterator[list[PgVectorStore]]:
    made: list[PgVectorStore] = []
    yield made
    for store in made:
        for name in store.list_collections():
            store.delete_collection(name)
        store.close()


def test_bulk_load_then_index(pgvector_dsn: str, user: str, store_factory: list[PgVectorStore]) -> None:
    store = PgVectorStore.connect(pgvector_dsn, 100, user, index_min_rows=50)
    store_factory.append(store)
    store.ensure_collection("bulk", 8)
    rng = np.random.default_rng(1)
    table = table_name_for(user, "bulk")
    store.upsert("bulk", [f"a{i}" for i in range(40)], rng.standard_normal((40, 8)))
    assert hnsw_indexes(store.pool, table) == []  # still loading: exact scans, fast inserts
    store.upsert("bulk", [f"b{i}" for i in range(300)], rng.standard_normal((300, 8)))  # COPY path
    (definition,) = hnsw_indexes(store.pool, table)
    assert "vector_cosine_ops" in definition
    assert store.count("bulk") == 340


def test_selective_filter_on_hnsw_still_returns_top_k(pgvector_dsn: str, user: str,
                                                        store_factory: list[PgVectorStore]) -> None:
    store = PgVectorStore(PgConnectionPool(pgvector_dsn, ef_search=10), user, index_min_rows=0, owns_pool=True)
    store_factory.append(store)
    store.ensure_collection("sparse", 8)
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((800, 8)).astype(np.float32)
    store.upsert("sparse", [str(i) for i in range(800)], vectors, None, [{"rank": i} for i in range(800)])
    rare = range(14)
    query = rng.standard_normal(8)
    # A range filter: the planner walks the HNSW index, whose 10 candidates hold few matches.
    hits = store.query("sparse", query, 10, where={"rank": {"$lt": 14}})
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = normed @ (query / np.linalg.norm(query))
    exact = sorted(rare, key=lambda i: -scores[i])[:10]
    assert [h.id for h in hits] == [str(i) for i in exact]


def test_a_table_dropped_underneath_reads_as_missing(pgvector_dsn: str, user: str,
                                                      store_factory: list[PgVectorStore]) -> None:
    store = PgVectorStore.connect(pgvector_dsn, 100, user)
    store_factory.append(store)
    store.ensure_collection("gone", 2)
    store.upsert("gone", ["a"], [[1.0, 0.0]])
    with store.pool.connection() as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table_name_for(user, "gone"))))
    assert store.count("gone") == 0 and store.get("gone") == [] and store.delete("gone", ["a"]) == 0
    assert store.query("gone", [1.0, 0.0], 3) == []
    assert store.delete_collection("gone") is True and store.list_collections() == []


def test_concurrent_ensure_and_upsert(pgvector_dsn: str, user: str, store_factory: list[PgVectorStore]) -> None:
    store = PgVectorStore.connect(pgvector_dsn, 100, user, index_min_rows=40)
    store_factory.append(store)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            store.ensure_collection("race", 4)
            store.upsert("race", [f"{n}-{i}" for i in range(15)], np.ones((15, 4)) + n)
        except BaseException as exc:  # collected for the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.list_collections() == ["race"] and store.count("race") == 60
    assert len(hnsw_indexes(store.pool, table_name_for(user, "race"))) == 1


def test_session_settings_and_bounded_pool(pgvector_dsn: str) -> None:
    pool = PgConnectionPool(pgvector_dsn, ef_search=123, max_size=1, acquire_timeout_s=0.05)
    try:
        with pool.connection() as conn:
            assert conn.execute("SHOW hnsw.ef_search").fetchone() == ("123",)
            with pytest.raises(ServiceUnavailable):
                with pool.connection():
                    pass
        with pool.connection() as again:
            assert again is conn  # returned to the pool and reused
    finally:
        pool.close()
    with pytest.raises(ServiceUnavailable):
        with pool.connection():
            pass


def test_unreachable_database_is_service_unavailable(tmp_path: Path) -> None:
    dsn = f"postgresql://postgres@/postgres?host={tmp_path}"  # no server listens there
    store = PgVectorStore(PgConnectionPool(dsn, connect_timeout_s=2), "u1", owns_pool=True)
    with pytest.raises(ServiceUnavailable):
        store.list_collections()
    store.close()


def test_factory_configuration(tmp_path: Path, pgvector_dsn: str) -> None:
    missing = make_settings(tmp_path, rag={"vector_store_type": "pgvector"}).storage_config()
    with pytest.raises(InvalidInput, match="RAG__PGVECTOR__DSN"):
        create_vector_store_factory(missing)
    # The stub replaces Chroma only: a configured pgvector store stays pgvector.
    both = make_settings(tmp_path, chromadb_force_stub=True,
                         rag={"vector_store_type": "pgvector", "pgvector": {"dsn": pgvector_dsn}}).storage_config()
    factory = create_vector_store_factory(both)
    try:
        assert isinstance(factory, PgVectorStoreFactory)
        assert factory.for_user("u1") is factory.for_user("u1")
        with pytest.raises(InvalidInput):
            factory.for_user("../u1")
    finally:
        factory.close()
