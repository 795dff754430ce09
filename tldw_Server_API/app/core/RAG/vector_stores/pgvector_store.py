"""`PgVectorStore`: the `VectorStore` protocol over PostgreSQL + pgvector.

Layout: one table per (user, collection), named `tldw_vs_<sha256(user, name)[:32]>` (an HNSW index
needs one fixed `vector(dim)`), listed in the `tldw_vector_collections` registry. Rows: id, an
insertion sequence (paging order), embedding, document, JSONB metadata (GIN-indexed for filters).
Bulk first, index after: the HNSW cosine index is built once a collection holds `index_min_rows`
rows; large upserts go through binary COPY into a staging table. Imports psycopg via the pool.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext, suppress
from typing import Any, NamedTuple, TypeVar

import numpy as np
from psycopg import Connection, sql
from psycopg.errors import UndefinedTable
from psycopg.types.json import Jsonb

from tldw_Server_API.app.core.Embeddings.ChromaDB_Library import validate_user_id
from tldw_Server_API.app.core.errors import InvalidInput, NotFound
from tldw_Server_API.app.core.RAG.vector_stores.base import (
    VectorHit,
    VectorRecord,
    as_query_vector,
    order_by_request,
    page,
    prepare_upsert,
    validate_collection_name,
    validate_dimension,
    validate_ids,
    validate_paging,
    validate_top_k,
)
from tldw_Server_API.app.core.RAG.vector_stores.filters import parse_where, to_sql
from tldw_Server_API.app.core.RAG.vector_stores.pg_connections import REGISTRY_TABLE, PgConnectionPool

DEFAULT_INDEX_MIN_ROWS = 2000   # below this an exact scan is as fast as HNSW and loads stay fast
COPY_MIN_ROWS = 256             # from here COPY into a staging table beats executemany
INDEX_BUILD_MEMORY = "256MB"    # maintenance_work_mem for one HNSW build
_REGISTRY = sql.Identifier(REGISTRY_TABLE)
T = TypeVar("T")
_UPSERT_SET = "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding, " \
              "document = EXCLUDED.document, metadata = EXCLUDED.metadata"


class _Table(NamedTuple):
    ident: sql.Identifier
    dimension: int
    indexed: bool
    name: str


def table_name_for(user_id: str, name: str) -> str:
    digest = hashlib.sha256(f"{user_id}\x00{name}".encode()).hexdigest()[:32]
    return f"tldw_vs_{digest}"


def _where_sql(where: Mapping[str, Any] | None) -> tuple[str, list[Any]]:
    node = parse_where(where)
    return ("TRUE", []) if node is None else to_sql(node, "metadata")


def _vector_list(value: Any) -> list[float]:
    array = value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)
    return [float(x) for x in array]


class PgVectorStore:
    """One user's collections in PostgreSQL; stores from a factory share its pool."""

    def __init__(self, pool: PgConnectionPool, user_id: str, *, index_min_rows: int = DEFAULT_INDEX_MIN_ROWS,
                 owns_pool: bool = False) -> None:
        self._pool = pool
        self.user_id = validate_user_id(user_id)
        self.index_min_rows = index_min_rows
        self._owns_pool = owns_pool

    @property
    def pool(self) -> PgConnectionPool:
        return self._pool

    @classmethod
    def connect(cls, dsn: str, ef_search: int, user_id: str, **kwargs: Any) -> PgVectorStore:
        """A standalone store with its own pool, closed by `close()`."""
        return cls(PgConnectionPool(dsn, ef_search), user_id, owns_pool=True, **kwargs)

    # --- registry --------------------------------------------------------------------------------

    def _info(self, conn: Connection[Any], name: str) -> _Table | None:
        row = conn.execute(
            sql.SQL("SELECT table_name, dimension, indexed FROM {} WHERE user_id = %s AND name = %s").format(_REGISTRY),
            (self.user_id, validate_collection_name(name))).fetchone()
        return None if row is None else _Table(sql.Identifier(row[0]), int(row[1]), bool(row[2]), str(row[0]))

    def _on_table(self, name: str, default: T, action: Callable[[Connection[Any], _Table], T], *,
                  transaction: bool = False) -> T:
        """Run `action` on the collection's table; `default` when the collection does not exist
        (or was dropped between the registry lookup and the statement)."""
        validate_collection_name(name)
        with self._pool.connection() as conn:
            try:
                with conn.transaction() if transaction else nullcontext():
                    table = self._info(conn, name)
                    return default if table is None else action(conn, table)
            except UndefinedTable:
                return default

    def _lock(self, conn: Connection[Any], table: str) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (table,))

    def ensure_collection(self, name: str, dimension: int, metric: str = "cosine") -> None:
        validate_dimension(dimension, metric)
        table = table_name_for(self.user_id, validate_collection_name(name))
        with self._pool.connection() as conn, conn.transaction():
            self._lock(conn, table)
            info = self._info(conn, name)
            if info is not None:
                if info.dimension != dimension:
                    raise InvalidInput(f"collection {name!r} has dimension {info.dimension}, not {dimension}",
                                       param="dimension", code="dimension_mismatch")
                return
            ident = sql.Identifier(table)
            conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, seq bigint GENERATED ALWAYS AS IDENTITY, "
                "embedding vector({}) NOT NULL, document text NOT NULL DEFAULT '', "
                "metadata jsonb NOT NULL DEFAULT '{{}}')").format(ident, sql.Literal(dimension)))
            conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin (metadata jsonb_path_ops)").format(
                sql.Identifier(f"{table}_meta"), ident))
            conn.execute(sql.SQL("INSERT INTO {} (user_id, name, table_name, dimension, metric) "
                                 "VALUES (%s, %s, %s, %s, %s)").format(_REGISTRY),
                         (self.user_id, name, table, dimension, metric))
            if self.index_min_rows <= 0:
                self._build_index(conn, table)

    def _build_index(self, conn: Connection[Any], table: str) -> None:
        conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(INDEX_BUILD_MEMORY)))
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding vector_cosine_ops)").format(
            sql.Identifier(f"{table}_hnsw"), sql.Identifier(table)))
        conn.execute(sql.SQL("UPDATE {} SET indexed = true WHERE table_name = %s").format(_REGISTRY), (table,))

    # --- writes ----------------------------------------------------------------------------------

    def upsert(self, name: str, ids: Sequence[str], vectors: Any,
               documents: Sequence[str] | None = None,
               metadatas: Sequence[Mapping[str, Any] | None] | None = None) -> None:
        validate_collection_name(name)
        with self._pool.connection() as conn:
            with conn.transaction():
                info = self._info(conn, name)
                if info is None:
                    raise NotFound(f"collection {name!r} does not exist", param="collection")
                table, dimension, indexed, table_name = info
                id_list, matrix, docs, metas = prepare_upsert(ids, vectors, documents, metadatas, dimension)
                rows = [(i, matrix[n], docs[n], Jsonb(metas[n])) for n, i in enumerate(id_list)]
                if len(rows) >= COPY_MIN_ROWS:
                    self._copy_upsert(conn, table, dimension, rows)
                else:
                    with conn.cursor() as cur:
                        cur.executemany(sql.SQL("INSERT INTO {} (id, embedding, document, metadata) "
                                                "VALUES (%s, %s, %s, %s) " + _UPSERT_SET).format(table), rows)
            if not indexed:
                # Its own transaction, after the rows are committed: building the index while
                # holding row locks would deadlock with a concurrent loader waiting for the lock.
                with suppress(UndefinedTable):  # dropped meanwhile: nothing left to index
                    self._index_when_large(conn, name, table_name)

    @staticmethod
    def _copy_upsert(conn: Connection[Any], table: sql.Identifier, dimension: int, rows: list[tuple[Any, ...]]) -> None:
        conn.execute(sql.SQL("CREATE TEMP TABLE tldw_stage (id text, embedding vector({}), document text, "
                             "metadata jsonb) ON COMMIT DROP").format(sql.Literal(dimension)))
        with conn.cursor() as cur, cur.copy(
                "COPY tldw_stage (id, embedding, document, metadata) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["text", "vector", "text", "jsonb"])
            for row in rows:
                copy.write_row(row)
        conn.execute(sql.SQL("INSERT INTO {} (id, embedding, document, metadata) "
                             "SELECT id, embedding, document, metadata FROM tldw_stage " + _UPSERT_SET).format(table))

    def _index_when_large(self, conn: Connection[Any], name: str, table: str) -> None:
        with conn.transaction():
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
            if row is None or row[0] < self.index_min_rows:
                return
            self._lock(conn, table)
            info = self._info(conn, name)  # re-read under the lock: another loader may have built it
            if info is not None and not info.indexed:
                self._build_index(conn, table)

    def delete(self, name: str, ids: Sequence[str]) -> int:
        id_list = validate_ids(ids, unique=False)
        if not id_list:
            return 0

        def action(conn: Connection[Any], table: _Table) -> int:
            cur = conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(table.ident), (id_list,))
            return max(cur.rowcount, 0)

        return self._on_table(name, 0, action)

    def delete_where(self, name: str, where: Mapping[str, Any]) -> int:
        node = parse_where(where)
        if node is None:
            raise InvalidInput("delete_where needs a non-empty filter (use delete_collection to drop all)",
                               param="where")
        clause, params = to_sql(node, "metadata")

        def action(conn: Connection[Any], table: _Table) -> int:
            cur = conn.execute(sql.SQL("DELETE FROM {} WHERE " + clause).format(table.ident), params)
            return max(cur.rowcount, 0)

        return self._on_table(name, 0, action)

    def delete_collection(self, name: str) -> bool:
        table = table_name_for(self.user_id, validate_collection_name(name))
        with self._pool.connection() as conn, conn.transaction():
            self._lock(conn, table)
            row = conn.execute(sql.SQL("DELETE FROM {} WHERE user_id = %s AND name = %s RETURNING table_name").format(
                _REGISTRY), (self.user_id, name)).fetchone()
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            return row is not None

    # --- reads -----------------------------------------------------------------------------------

    def query(self, name: str, vector: Any, top_k: int, where: Mapping[str, Any] | None = None) -> list[VectorHit]:
        validate_top_k(top_k)
        clause, params = _where_sql(where)
        as_query_vector(vector, None)

        def action(conn: Connection[Any], table: _Table) -> list[VectorHit]:
            query = as_query_vector(vector, table.dimension)
            # HNSW returns at most ef_search rows: never fewer than asked for.
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(max(self._pool.ef_search, top_k)),))
            statement = sql.SQL("SELECT id, document, metadata, 1 - (embedding <=> %s) FROM {} WHERE " + clause +
                                " ORDER BY embedding <=> %s LIMIT %s").format(table.ident)
            args = [query, *params, query, top_k]
            rows = conn.execute(statement, args).fetchall()
            if table.indexed and params and len(rows) < top_k:
                # A filter can starve the HNSW scan of candidates; answer it exactly instead.
                conn.execute("SET LOCAL enable_indexscan = off")
                rows = conn.execute(statement, args).fetchall()
            return [VectorHit(id=r[0], score=float(r[3]), document=r[1], metadata=dict(r[2])) for r in rows]

        return self._on_table(name, [], action, transaction=True)

    def get(self, name: str, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None,
            limit: int | None = None, offset: int = 0, include_vectors: bool = False) -> list[VectorRecord]:
        limit, offset = validate_paging(limit, offset)
        id_list = validate_ids(ids, unique=False) if ids is not None else None
        clause, params = _where_sql(where)
        validate_collection_name(name)
        if limit == 0 or id_list == []:
            return []
        columns = "id, document, metadata" + (", embedding" if include_vectors else "")
        text = f"SELECT {columns} FROM {{}} WHERE ({clause})"
        args: list[Any] = list(params)
        if id_list is not None:
            text += " AND id = ANY(%s)"
            args.append(id_list)
        text += " ORDER BY seq"
        if id_list is None:  # with ids the order is the caller's: page after reordering
            text += " LIMIT %s OFFSET %s"
            args += [limit, offset]

        def action(conn: Connection[Any], table: _Table) -> list[Any]:
            return conn.execute(sql.SQL(text).format(table.ident), args).fetchall()

        rows: list[Any] = self._on_table(name, [], action)
        records = [VectorRecord(id=r[0], document=r[1], metadata=dict(r[2]),
                                vector=_vector_list(r[3]) if include_vectors else None) for r in rows]
        return page(order_by_request(records, id_list), limit, offset) if id_list is not None else records

    def count(self, name: str, where: Mapping[str, Any] | None = None) -> int:
        clause, params = _where_sql(where)

        def action(conn: Connection[Any], table: _Table) -> int:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE " + clause).format(table.ident),
                               params).fetchone()
            return int(row[0]) if row else 0

        return self._on_table(name, 0, action)

    def list_collections(self) -> list[str]:
        with self._pool.connection() as conn:
            rows = conn.execute(sql.SQL("SELECT name FROM {} WHERE user_id = %s ORDER BY name").format(_REGISTRY),
                                (self.user_id,)).fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        if self._owns_pool:
            self._pool.close()
