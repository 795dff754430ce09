"""Metadata of the OpenAI-compatible vector stores (`vs_` ids), per user, in SQLAlchemy.

The vectors themselves live in the RAG vector store adapters; this module keeps what the
OpenAI object shows: name (unique per user), metadata, model, dimensions, status, usage, times.
May import SQLAlchemy, `_sql_engine` and core errors; no HTTP, no vector store clients.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    delete,
    select,
    update,
)
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from tldw_Server_API.app.core.Embeddings._sql_engine import (
    MAX_PAGE_SIZE,
    Clock,
    Order,
    PageQuery,
    UTCDateTime,
    check_limit,
    engine_for,
    keyset_page,
    new_id,
    transaction,
    utc_now,
)
from tldw_Server_API.app.core.errors import Conflict, InvalidInput, NotFound

STORE_STATUSES = ("in_progress", "completed", "expired")
MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_LENGTH = 64
MAX_METADATA_VALUE_LENGTH = 512
MAX_NAME_LENGTH = 256

_metadata = MetaData()
stores_table = Table(
    "vector_stores",
    _metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("name", String(MAX_NAME_LENGTH), nullable=True),
    Column("metadata_json", JSON, nullable=False),
    Column("embedding_model", String(255), nullable=False),
    Column("embedding_provider", String(64), nullable=False),
    Column("dimensions", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("vector_count", Integer, nullable=False, default=0),
    Column("usage_bytes", BigInteger, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("user_id", "name", name="uq_vector_stores_user_name"),
    Index("ix_vector_stores_user_created", "user_id", "created_at", "id"),
)


def validate_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """OpenAI's rules: at most 16 pairs, keys up to 64 chars, string values up to 512 chars."""
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be an object", param="metadata")
    if len(metadata) > MAX_METADATA_KEYS:
        raise InvalidInput(f"metadata has more than {MAX_METADATA_KEYS} keys", param="metadata")
    for key, value in metadata.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METADATA_KEY_LENGTH:
            raise InvalidInput(f"metadata keys must be 1-{MAX_METADATA_KEY_LENGTH} characters", param="metadata")
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE_LENGTH:
            raise InvalidInput(
                f"metadata values must be strings of at most {MAX_METADATA_VALUE_LENGTH} characters",
                param="metadata",
            )
    return dict(metadata)


def _check_name(name: str | None) -> None:
    if name is not None and not 0 < len(name) <= MAX_NAME_LENGTH:
        raise InvalidInput(f"name must be 1-{MAX_NAME_LENGTH} characters", param="name")


@dataclass(frozen=True)
class VectorStoreRecord:
    id: str
    user_id: str
    name: str | None
    metadata: dict[str, str]
    embedding_model: str
    embedding_provider: str
    dimensions: int | None
    status: str
    vector_count: int
    usage_bytes: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> VectorStoreRecord:
        values = {f.name: row[f.name] for f in fields(cls) if f.name != "metadata"}
        return cls(metadata=dict(row["metadata_json"] or {}), **values)


class VectorStoreMetaDB:
    """Vector store records, scoped per user. Thread-safe; one shared engine per URL."""

    def __init__(self, url: str, *, clock: Clock = utc_now) -> None:
        self.engine = engine_for(url)
        self._clock = clock
        _metadata.create_all(self.engine)

    def create(
        self,
        user_id: str,
        *,
        name: str | None,
        embedding_model: str,
        embedding_provider: str,
        dimensions: int | None = None,
        metadata: dict[str, Any] | None = None,
        status: str = "completed",
    ) -> VectorStoreRecord:
        """A new store; Conflict when the user already has a store of that name."""
        _check_name(name)
        _check_status(status)
        if dimensions is not None and dimensions < 1:
            raise InvalidInput("dimensions must be >= 1", param="dimensions")
        now = self._clock()
        values = {
            "id": new_id("vs"), "user_id": user_id, "name": name, "metadata_json": validate_metadata(metadata or {}),
            "embedding_model": embedding_model, "embedding_provider": embedding_provider, "dimensions": dimensions,
            "status": status, "vector_count": 0, "usage_bytes": 0, "created_at": now, "updated_at": now,
        }
        try:
            with transaction(self.engine) as conn:
                conn.execute(stores_table.insert().values(**values))
                return self._read(conn, user_id, str(values["id"]))
        except IntegrityError as exc:
            raise Conflict(f"a vector store named {name!r} already exists", param="name") from exc

    def get(self, user_id: str, store_id: str) -> VectorStoreRecord:
        """The caller's store; NotFound for a missing store or another user's."""
        with transaction(self.engine) as conn:
            return self._read(conn, user_id, store_id)

    def get_by_name(self, user_id: str, name: str) -> VectorStoreRecord:
        with transaction(self.engine) as conn:
            row = conn.execute(
                select(stores_table).where(stores_table.c.user_id == user_id, stores_table.c.name == name)
            ).mappings().first()
        if row is None:
            raise NotFound(f"vector store named {name!r} not found", param="name")
        return VectorStoreRecord.from_row(row)

    def list_stores(
        self,
        user_id: str,
        *,
        limit: int = 20,
        order: Order = "desc",
        after: str | None = None,
        before: str | None = None,
    ) -> tuple[list[VectorStoreRecord], bool]:
        """One OpenAI list page of the caller's stores by (created_at, id) and `has_more`.
        `after`/`before` are store ids from earlier pages (InvalidInput when unknown)."""
        check_limit(limit, MAX_PAGE_SIZE)
        page = PageQuery(limit=limit, order=order, after=after, before=before)
        with transaction(self.engine) as conn:
            rows, has_more = keyset_page(conn, stores_table, stores_table.c.user_id == user_id, page)
        return [VectorStoreRecord.from_row(row) for row in rows], has_more

    def update(
        self,
        user_id: str,
        store_id: str,
        *,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        dimensions: int | None = None,
        status: str | None = None,
        vector_count: int | None = None,
        usage_bytes: int | None = None,
    ) -> VectorStoreRecord:
        """Change the fields given (None leaves a field as it is); Conflict on a name clash."""
        _check_name(name)
        values: dict[str, Any] = {"updated_at": self._clock()}
        if name is not None:
            values["name"] = name
        if metadata is not None:
            values["metadata_json"] = validate_metadata(metadata)
        if status is not None:
            _check_status(status)
            values["status"] = status
        for field, value in (("dimensions", dimensions), ("vector_count", vector_count), ("usage_bytes", usage_bytes)):
            if value is not None:
                if value < 0:
                    raise InvalidInput(f"{field} must be >= 0", param=field)
                values[field] = value
        try:
            with transaction(self.engine) as conn:
                conn.execute(update(stores_table).where(*self._scope(user_id, store_id)).values(**values))
                return self._read(conn, user_id, store_id)
        except IntegrityError as exc:
            raise Conflict(f"a vector store named {name!r} already exists", param="name") from exc

    def delete(self, user_id: str, store_id: str) -> None:
        """Remove the caller's store record; NotFound when there is none."""
        with transaction(self.engine) as conn:
            result = conn.execute(delete(stores_table).where(*self._scope(user_id, store_id)))
        if result.rowcount != 1:
            raise NotFound(f"vector store {store_id!r} not found", param="vector_store_id")

    @staticmethod
    def _scope(user_id: str, store_id: str) -> tuple[Any, Any]:
        return stores_table.c.id == store_id, stores_table.c.user_id == user_id

    @classmethod
    def _read(cls, conn: Connection, user_id: str, store_id: str) -> VectorStoreRecord:
        row = conn.execute(select(stores_table).where(*cls._scope(user_id, store_id))).mappings().first()
        if row is None:
            raise NotFound(f"vector store {store_id!r} not found", param="vector_store_id")
        return VectorStoreRecord.from_row(row)


def _check_status(status: str) -> None:
    if status not in STORE_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STORE_STATUSES)}", param="status")
