"""Vector store files and file batches (OpenAI's `vector_store.file` / `vector_store.file_batch`):
which uploaded file is attached to which store, through which media item and embedding job, with
its attributes and chunking, and the batches that attached several at once. A file's status is
not stored: it is read from its job (the jobs DB is the source of truth); only a file refused
before any job existed (it could not be read) keeps `failed` and its error here.

SQLAlchemy on the jobs DB (SQLite or PostgreSQL); thread-safe; every read is scoped to the user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Boolean, Column, Index, Integer, MetaData, String, Table, Text, and_, delete, select, update
from sqlalchemy.engine import RowMapping

from tldw_Server_API.app.core.Embeddings._sql_engine import (
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
from tldw_Server_API.app.core.errors import NotFound

_metadata = MetaData()
files_table = Table(
    "vector_store_files",
    _metadata,
    Column("store_id", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),          # the file id (OpenAI's vector_store.file id)
    Column("user_id", String(64), nullable=False),
    Column("media_id", Integer, nullable=True),
    Column("job_id", String(64), nullable=True),
    Column("batch_id", String(64), nullable=True),
    Column("filename", String(255), nullable=False),
    Column("attributes", Text, nullable=False, default="{}"),
    Column("chunking", Text, nullable=False, default="{}"),
    Column("usage_bytes", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),                 # refused before a job existed
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_vector_store_files_store", "user_id", "store_id", "created_at"),
    Index("ix_vector_store_files_batch", "batch_id"),
)
batches_table = Table(
    "vector_store_file_batches",
    _metadata,
    Column("id", String(64), primary_key=True),
    Column("store_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("cancelled", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False),
)


@dataclass(frozen=True)
class StoreFile:
    store_id: str
    id: str
    user_id: str
    media_id: int | None
    job_id: str | None
    batch_id: str | None
    filename: str
    attributes: dict[str, Any]
    chunking: dict[str, Any]
    usage_bytes: int
    error: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> StoreFile:
        return cls(row["store_id"], row["id"], row["user_id"], row["media_id"], row["job_id"], row["batch_id"],
                   row["filename"], orjson.loads(row["attributes"]), orjson.loads(row["chunking"]),
                   int(row["usage_bytes"]), row["error"], row["created_at"])


@dataclass(frozen=True)
class FileBatch:
    id: str
    store_id: str
    user_id: str
    cancelled: bool
    created_at: datetime


class VectorStoreFilesDB:
    def __init__(self, url: str, *, clock: Clock = utc_now) -> None:
        self.engine = engine_for(url)
        self._clock = clock
        _metadata.create_all(self.engine)

    def add(self, user_id: str, store_id: str, file_id: str, filename: str, *, media_id: int | None,
            job_id: str | None, batch_id: str | None, attributes: dict[str, Any], chunking: dict[str, Any],
            usage_bytes: int, error: str | None = None) -> StoreFile:
        """Attach (or re-attach: the row is replaced) a file to a store."""
        values = {"store_id": store_id, "id": file_id, "user_id": user_id, "media_id": media_id, "job_id": job_id,
                  "batch_id": batch_id, "filename": filename, "attributes": orjson.dumps(attributes).decode(),
                  "chunking": orjson.dumps(chunking).decode(), "usage_bytes": usage_bytes, "error": error,
                  "created_at": self._clock()}
        c = files_table.c
        with transaction(self.engine) as conn:
            conn.execute(delete(files_table).where(c.store_id == store_id, c.id == file_id, c.user_id == user_id))
            conn.execute(files_table.insert().values(**values))
            row = conn.execute(select(files_table).where(c.store_id == store_id, c.id == file_id)).mappings().one()
        return StoreFile.from_row(row)

    def get(self, user_id: str, store_id: str, file_id: str) -> StoreFile:
        c = files_table.c
        with transaction(self.engine) as conn:
            row = conn.execute(select(files_table).where(c.user_id == user_id, c.store_id == store_id,
                                                         c.id == file_id)).mappings().first()
        if row is None:
            raise NotFound(f"file {file_id[:64]!r} is not in vector store {store_id[:64]!r}", param="file_id")
        return StoreFile.from_row(row)

    def page(self, user_id: str, store_id: str, *, limit: int = 20, order: Order = "desc", after: str | None = None,
             before: str | None = None, batch_id: str | None = None) -> tuple[list[StoreFile], bool]:
        check_limit(limit, 100)
        c = files_table.c
        scope = and_(c.user_id == user_id, c.store_id == store_id, *([c.batch_id == batch_id] if batch_id else []))
        with transaction(self.engine) as conn:
            rows, has_more = keyset_page(conn, files_table, scope, PageQuery(limit, order, after, before))
        return [StoreFile.from_row(row) for row in rows], has_more

    def all(self, user_id: str, store_id: str, batch_id: str | None = None) -> list[StoreFile]:
        c = files_table.c
        conditions = [c.user_id == user_id, c.store_id == store_id, *([c.batch_id == batch_id] if batch_id else [])]
        with transaction(self.engine) as conn:
            rows = conn.execute(select(files_table).where(*conditions).order_by(c.created_at)).mappings().all()
        return [StoreFile.from_row(row) for row in rows]

    def all_in_stores(self, user_id: str, store_ids: Sequence[str]) -> list[StoreFile]:
        """The files of several of the user's stores (a page of stores, at most 100), one query."""
        c = files_table.c
        with transaction(self.engine) as conn:
            rows = conn.execute(select(files_table).where(c.user_id == user_id, c.store_id.in_(list(store_ids)))
                                .order_by(c.created_at)).mappings().all()
        return [StoreFile.from_row(row) for row in rows]

    def media_ids(self, user_id: str) -> set[int]:
        """The user's media items that are vector-store files (embedded with their store's model)."""
        c = files_table.c
        with transaction(self.engine) as conn:
            rows = conn.execute(select(c.media_id).where(c.user_id == user_id, c.media_id.is_not(None)))
            return {int(row[0]) for row in rows}

    def remove(self, user_id: str, store_id: str, file_id: str) -> StoreFile:
        found = self.get(user_id, store_id, file_id)
        c = files_table.c
        with transaction(self.engine) as conn:
            conn.execute(delete(files_table).where(c.user_id == user_id, c.store_id == store_id, c.id == file_id))
        return found

    def remove_store(self, user_id: str, store_id: str) -> list[StoreFile]:
        files = self.all(user_id, store_id)
        with transaction(self.engine) as conn:
            conn.execute(delete(files_table).where(files_table.c.user_id == user_id,
                                                   files_table.c.store_id == store_id))
            conn.execute(delete(batches_table).where(batches_table.c.user_id == user_id,
                                                     batches_table.c.store_id == store_id))
        return files

    # --- batches -------------------------------------------------------------------------------
    def create_batch(self, user_id: str, store_id: str) -> FileBatch:
        batch = FileBatch(new_id("vsfb"), store_id, user_id, False, self._clock())
        with transaction(self.engine) as conn:
            conn.execute(batches_table.insert().values(id=batch.id, store_id=store_id, user_id=user_id,
                                                       cancelled=False, created_at=batch.created_at))
        return batch

    def get_batch(self, user_id: str, store_id: str, batch_id: str) -> FileBatch:
        c = batches_table.c
        with transaction(self.engine) as conn:
            row = conn.execute(select(batches_table).where(c.id == batch_id, c.user_id == user_id,
                                                           c.store_id == store_id)).mappings().first()
        if row is None:
            raise NotFound(f"file batch {batch_id[:64]!r} not found", param="batch_id")
        return FileBatch(row["id"], row["store_id"], row["user_id"], bool(row["cancelled"]), row["created_at"])

    def cancel_batch(self, user_id: str, store_id: str, batch_id: str) -> None:
        self.get_batch(user_id, store_id, batch_id)
        c = batches_table.c
        with transaction(self.engine) as conn:
            conn.execute(update(batches_table).where(c.id == batch_id).values(cancelled=True))

