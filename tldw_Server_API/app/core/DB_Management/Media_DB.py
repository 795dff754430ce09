"""The host's per-user media store: one SQLite file per user at `<data_dir>/users/<user_id>/media.db`
holding media (soft delete, sha256 content hash) and their chunks, indexed by FTS5 for BM25 search.
Imports the standard library, core errors and the pure chunk/FTS-query helpers; no HTTP, no env.
Methods are synchronous (the API layer calls them from a worker thread); one connection per
database, shared by threads and serialised by a lock, in WAL mode so other processes can read.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tldw_Server_API.app.core.AuthNZ.api_keys import validate_user_id
from tldw_Server_API.app.core.Chunking.chunker import Chunk
from tldw_Server_API.app.core.DB_Management.fts_query import build_match_expression
from tldw_Server_API.app.core.errors import InvalidInput, NotFound, QuotaExceeded, ServiceUnavailable

SCHEMA_VERSION = 4   # 2: media.content_bytes (per-user storage quota); 3: pages (PDF page numbers);
                     # 4: media.source_hash (sha256 of the uploaded file: ingest skips what is stored)
MAX_LIST_LIMIT = 1000

# Columns added since version 1, and the data an upgrade from a version before them must fill in.
# An upgrade adds those an existing table lacks (a table that does not exist yet is made whole).
_ADDED_COLUMNS = (
    ("media", "content_bytes", "INTEGER NOT NULL DEFAULT 0"),   # 2: per-user storage quota
    ("media", "page_starts", "TEXT"),                           # 3: where each page starts (JSON array)
    ("media_chunks", "page", "INTEGER"),                        # 3: the page a chunk starts on
    ("media", "source_hash", "TEXT"),                           # 4: sha256 of the uploaded file
)
_FILL_FROM = {2: "UPDATE media SET content_bytes = length(CAST(content AS BLOB));"}


def _upgrade_script(conn: sqlite3.Connection, version: int) -> str:
    if version == 0:
        return ""
    statements = []
    for table, column, declaration in _ADDED_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if present and column not in present:
            statements.append(f"ALTER TABLE {table} ADD COLUMN {column} {declaration};")
    statements += [sql for v, sql in _FILL_FROM.items() if version < v]
    return "\n".join(statements)


# media_chunks holds each chunk's text and offsets (indexed by media id, so replacing or dropping
# one media's chunks is cheap); media_chunks_fts is an external-content FTS5 index over it, kept in
# step by triggers. AUTOINCREMENT: a media id is never reused, so stale vectors never match new media.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS media (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    content TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    content_bytes INTEGER NOT NULL DEFAULT 0,
    media_type TEXT NOT NULL,
    source_filename TEXT,
    source_hash TEXT,
    page_starts TEXT,
    chunk_count INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
    deleted_at TEXT
);
CREATE INDEX IF NOT EXISTS media_live_idx ON media (deleted, id);
CREATE INDEX IF NOT EXISTS media_hash_idx ON media (content_hash);
CREATE INDEX IF NOT EXISTS media_source_hash_idx ON media (source_hash);
CREATE TABLE IF NOT EXISTS media_chunks (
    id INTEGER PRIMARY KEY,
    media_id INTEGER NOT NULL REFERENCES media (id) ON DELETE CASCADE,
    chunk_index INTEGER NOT NULL,
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    UNIQUE (media_id, chunk_index)
);
CREATE VIRTUAL TABLE IF NOT EXISTS media_chunks_fts USING fts5(
    text, content='media_chunks', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS media_chunks_ai AFTER INSERT ON media_chunks BEGIN
    INSERT INTO media_chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER IF NOT EXISTS media_chunks_ad AFTER DELETE ON media_chunks BEGIN
    INSERT INTO media_chunks_fts (media_chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""

_RECORD_COLUMNS = (
    "id, title, media_type, source_filename, content_hash, chunk_count, created_at, updated_at, deleted, deleted_at,"
    " source_hash"
)


@dataclass(frozen=True)
class MediaSummary:
    """A media item without its content (what listings return)."""

    id: int
    title: str
    media_type: str
    source_filename: str | None
    content_hash: str  # sha256 hex of the content's UTF-8 bytes
    chunk_count: int
    created_at: datetime
    updated_at: datetime
    deleted: bool
    deleted_at: datetime | None
    source_hash: str | None = None   # sha256 hex of the uploaded file's bytes (uploads only)


@dataclass(frozen=True)
class MediaRecord(MediaSummary):
    content: str = ""
    page_starts: tuple[int, ...] | None = None   # where page i + 1 starts in `content` (paged sources)


@dataclass(frozen=True)
class FtsHit:
    media_id: int
    chunk_index: int
    text: str
    start_char: int
    end_char: int
    title: str
    score: float  # -bm25(): higher is better; comparable within one query only
    page: int | None = None


_SQL_PARAMS = 500  # ids per IN (...) query, well under SQLite's bound-parameter limit


def user_media_db_path(data_dir: Path, user_id: str) -> Path:
    """`<data_dir>/users/<user_id>/media.db`, refused unless it resolves to exactly that path: a
    symlinked user directory or file (outside the data dir, or to another user's) is an escape."""
    expected = Path(data_dir).resolve() / "users" / validate_user_id(user_id) / "media.db"
    if expected.resolve() != expected:
        raise InvalidInput("the user's media path resolves elsewhere (symbolic link)", param="user_id")
    return expected


def content_hash(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _summary_fields(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"], "title": row["title"], "media_type": row["media_type"],
        "source_filename": row["source_filename"], "content_hash": row["content_hash"],
        "chunk_count": row["chunk_count"], "created_at": datetime.fromisoformat(row["created_at"]),
        "updated_at": datetime.fromisoformat(row["updated_at"]), "deleted": bool(row["deleted"]),
        "deleted_at": datetime.fromisoformat(row["deleted_at"]) if row["deleted_at"] else None,
        "source_hash": row["source_hash"],
    }


class MediaDB:
    """One user's media database. Thread-safe: every method takes the instance lock."""

    def __init__(self, path: Path, clock: Callable[[], datetime] = _utc_now) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            upgrade = _upgrade_script(conn, version)
            conn.executescript(f"BEGIN; {upgrade} {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        self._conn: sqlite3.Connection | None = conn

    @classmethod
    def for_user(cls, data_dir: Path, user_id: str, clock: Callable[[], datetime] = _utc_now) -> MediaDB:
        return cls(user_media_db_path(data_dir, user_id), clock=clock)

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """Reads get one consistent snapshot (deferred); writes take SQLite's write lock at once."""
        with self._lock:
            if self._conn is None:
                raise ServiceUnavailable("the media database is closed")
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _now(self) -> str:
        return self._clock().astimezone(UTC).isoformat()

    def add_media(
        self, title: str, content: str, media_type: str, source_filename: str | None = None,
        quota_bytes: int = 0, page_starts: Sequence[int] | None = None, source_hash: str | None = None,
    ) -> MediaRecord:
        """Store a media item; with `quota_bytes` > 0 the live media's text may not exceed it
        (checked in the write transaction, so concurrent uploads cannot both slip under)."""
        if not content or not content.strip():
            raise InvalidInput("content must not be empty", param="content")
        if not media_type or not media_type.strip():
            raise InvalidInput("media_type must not be empty", param="media_type")
        if page_starts and (list(page_starts) != sorted(page_starts) or page_starts[0] < 0
                            or page_starts[-1] > len(content)):
            raise InvalidInput("page_starts must be ascending offsets into the content", param="page_starts")
        now = self._now()
        size = len(content.encode("utf-8"))
        with self._transaction(write=True) as conn:
            if quota_bytes > 0:
                used = self._live_bytes(conn)
                if used + size > quota_bytes:
                    raise QuotaExceeded(
                        f"this upload of {size} bytes would take your stored media to {used + size} bytes; "
                        f"the quota is {quota_bytes} (MEDIA_USER_QUOTA_BYTES): delete media to make room",
                        param="content")
            cursor = conn.execute(
                "INSERT INTO media (title, content, content_hash, content_bytes, media_type, source_filename,"
                " page_starts, created_at, updated_at, source_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((title or "").strip() or "Untitled", content, content_hash(content), size, media_type.strip(),
                 source_filename, json.dumps(list(page_starts)) if page_starts else None, now, now, source_hash),
            )
            media_id = int(cursor.lastrowid or 0)
            return self._get(conn, media_id, include_deleted=False)

    @staticmethod
    def _live_bytes(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT COALESCE(SUM(content_bytes), 0) FROM media WHERE deleted = 0").fetchone()[0])

    def stored_bytes(self) -> int:
        """UTF-8 bytes of the live media's text (what the storage quota counts)."""
        with self._transaction() as conn:
            return self._live_bytes(conn)

    def get_media(self, media_id: int, include_deleted: bool = False) -> MediaRecord:
        """The media with its content; NotFound when absent or (unless asked) soft-deleted."""
        with self._transaction() as conn:
            return self._get(conn, media_id, include_deleted)

    def _get(self, conn: sqlite3.Connection, media_id: int, include_deleted: bool) -> MediaRecord:
        row = conn.execute(f"SELECT {_RECORD_COLUMNS}, content, page_starts FROM media WHERE id = ?",
                           (media_id,)).fetchone()
        if row is None or (row["deleted"] and not include_deleted):
            raise NotFound(f"media {media_id} not found", param="media_id")
        pages = tuple(json.loads(row["page_starts"])) if row["page_starts"] else None
        return MediaRecord(**_summary_fields(row), content=row["content"], page_starts=pages)

    def list_media(self, limit: int = 50, offset: int = 0,
                   source_hash: str | None = None) -> tuple[list[MediaSummary], int]:
        """A page of live media, newest first (only those uploaded from a file with this sha256
        when `source_hash` is given), and how many match."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit")
        if offset < 0:
            raise InvalidInput("offset must not be negative", param="offset")
        where, args = ("deleted = 0", ()) if source_hash is None else ("deleted = 0 AND source_hash = ?",
                                                                       (source_hash,))
        with self._transaction() as conn:
            total = int(conn.execute(f"SELECT COUNT(*) FROM media WHERE {where}", args).fetchone()[0])
            rows = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM media WHERE {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [MediaSummary(**_summary_fields(row)) for row in rows], total

    def update_content(self, media_id: int, content: str, chunks: Sequence[Chunk], title: str | None = None,
                       quota_bytes: int = 0) -> MediaRecord:
        """Replace a live media's text (an edit) and its FTS chunks in one transaction: a new
        content hash, no pages (an edited text has none); within the storage quota like an add."""
        if not content or not content.strip():
            raise InvalidInput("content must not be empty", param="content")
        _check_chunks(content, chunks)
        size = len(content.encode("utf-8"))
        now = self._now()
        with self._transaction(write=True) as conn:
            old = self._get(conn, media_id, include_deleted=False)
            if quota_bytes > 0:
                used = self._live_bytes(conn) - len(old.content.encode("utf-8"))
                if used + size > quota_bytes:
                    raise QuotaExceeded(f"this edit would take your stored media to {used + size} bytes; the quota is "
                                        f"{quota_bytes} (MEDIA_USER_QUOTA_BYTES)", param="content")
            conn.execute(
                "UPDATE media SET content = ?, content_hash = ?, content_bytes = ?, page_starts = NULL,"
                " title = ?, updated_at = ? WHERE id = ?",
                (content, content_hash(content), size, ((title or "").strip() or old.title), now, media_id))
            _write_chunks(conn, media_id, chunks)
            return self._get(conn, media_id, include_deleted=False)

    def all_live_media_ids(self) -> list[int]:
        """Ids of every live media, ascending (an operator's re-embed of a user's media)."""
        with self._transaction() as conn:
            return [int(r[0]) for r in conn.execute("SELECT id FROM media WHERE deleted = 0 ORDER BY id")]

    def soft_delete(self, media_id: int) -> None:
        """Mark the media deleted and drop its chunks, so it leaves FTS results at once. Its vectors
        stay until the compactor removes them (`list_deleted_media_ids`). NotFound when absent."""
        now = self._now()
        with self._transaction(write=True) as conn:
            cursor = conn.execute(
                "UPDATE media SET deleted = 1, deleted_at = ?, updated_at = ?, chunk_count = 0"
                " WHERE id = ? AND deleted = 0",
                (now, now, media_id),
            )
            if cursor.rowcount == 0:
                raise NotFound(f"media {media_id} not found", param="media_id")
            conn.execute("DELETE FROM media_chunks WHERE media_id = ?", (media_id,))

    def replace_chunks(self, media_id: int, chunks: Sequence[Chunk]) -> None:
        """Atomically replace the media's chunks (and their FTS rows). Each chunk must be the slice
        `content[start_char:end_char]` of the media's content; chunk indexes must be distinct."""
        with self._transaction(write=True) as conn:
            content = self._get(conn, media_id, include_deleted=False).content
            _check_chunks(content, chunks)
            _write_chunks(conn, media_id, chunks)

    def list_chunks(self, media_id: int) -> list[Chunk]:
        """The stored chunks of a live media, by index."""
        with self._transaction() as conn:
            self._get(conn, media_id, include_deleted=False)
            rows = conn.execute(
                "SELECT chunk_index, text, start_char, end_char, page FROM media_chunks WHERE media_id = ?"
                " ORDER BY chunk_index",
                (media_id,),
            ).fetchall()
        return [Chunk(index=r[0], text=r[1], start_char=r[2], end_char=r[3], page=r[4]) for r in rows]

    def search_chunks_fts(
        self, query: str, limit: int = 10, media_ids: Sequence[int] | None = None, match_all: bool = False
    ) -> list[FtsHit]:
        """Best chunks of live media for a free-text query, by BM25. Terms are ORed (any may match)
        unless `match_all`; user syntax is neutralised. InvalidInput for a blank query."""
        expression = build_match_expression(query, match_all=match_all)
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIST_LIMIT}", param="limit")
        if expression is None or (media_ids is not None and not media_ids):
            return []
        sql = (
            "SELECT c.media_id, c.chunk_index, c.text, c.start_char, c.end_char, m.title,"
            " bm25(media_chunks_fts) AS rank, c.page FROM media_chunks_fts"
            " JOIN media_chunks c ON c.id = media_chunks_fts.rowid JOIN media m ON m.id = c.media_id"
            " WHERE media_chunks_fts MATCH ? AND m.deleted = 0"
        )
        params: list[object] = [expression]
        if media_ids is not None:
            sql += " AND c.media_id IN (SELECT value FROM json_each(?))"
            params.append(json.dumps([int(m) for m in media_ids]))
        sql += " ORDER BY rank LIMIT ?"
        params.append(limit)
        with self._transaction() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [FtsHit(r[0], r[1], r[2], r[3], r[4], r[5], -float(r[6]), r[7]) for r in rows]

    def live_media_ids(self, media_ids: Iterable[int]) -> set[int]:
        """Those of `media_ids` that exist and are not soft-deleted, in one query (search filters
        its vector hits with this; reading each record would load every content)."""
        wanted = sorted(set(media_ids))
        live: set[int] = set()
        with self._transaction() as conn:
            for start in range(0, len(wanted), _SQL_PARAMS):
                part = wanted[start:start + _SQL_PARAMS]
                marks = ",".join("?" * len(part))
                rows = conn.execute(f"SELECT id FROM media WHERE deleted = 0 AND id IN ({marks})", part)
                live.update(int(r[0]) for r in rows)
        return live

    def list_deleted_media_ids(self) -> list[int]:
        """Ids of soft-deleted media, ascending (for the vector compactor)."""
        with self._transaction() as conn:
            return [int(r[0]) for r in conn.execute("SELECT id FROM media WHERE deleted = 1 ORDER BY id")]

    def close(self) -> None:
        """Close the connection; idempotent. Later calls raise ServiceUnavailable."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _check_chunks(content: str, chunks: Sequence[Chunk]) -> None:
    seen: set[int] = set()
    for chunk in chunks:
        if chunk.index in seen:
            raise InvalidInput(f"duplicate chunk index {chunk.index}", param="chunks")
        seen.add(chunk.index)
        if not 0 <= chunk.start_char < chunk.end_char <= len(content) or (
            content[chunk.start_char:chunk.end_char] != chunk.text
        ):
            raise InvalidInput(f"chunk {chunk.index} is not a slice of the media content", param="chunks")


def _write_chunks(conn: sqlite3.Connection, media_id: int, chunks: Sequence[Chunk]) -> None:
    """Swap the media's chunks (and their FTS rows) for `chunks` inside the caller's transaction."""
    conn.execute("DELETE FROM media_chunks WHERE media_id = ?", (media_id,))
    conn.executemany(
        "INSERT INTO media_chunks (media_id, chunk_index, start_char, end_char, text, page) VALUES (?, ?, ?, ?, ?, ?)",
        [(media_id, c.index, c.start_char, c.end_char, c.text, c.page) for c in chunks],
    )
    conn.execute("UPDATE media SET chunk_count = ? WHERE id = ?", (len(chunks), media_id))


class MediaDBFactory:
    """One MediaDB per user under `data_dir`, opened on first use and kept until `close_all`."""

    def __init__(self, data_dir: Path, clock: Callable[[], datetime] = _utc_now) -> None:
        self.data_dir = Path(data_dir)
        self._clock = clock
        self._lock = threading.Lock()
        self._dbs: dict[str, MediaDB] = {}

    def get(self, user_id: str) -> MediaDB:
        path = user_media_db_path(self.data_dir, user_id)
        with self._lock:
            db = self._dbs.get(user_id)
            if db is None:
                db = self._dbs[user_id] = MediaDB(path, clock=self._clock)
            return db

    def user_ids(self) -> list[str]:
        """Every user with a media database under the data dir (operators' sweeps), sorted."""
        root = self.data_dir / "users"
        if not root.is_dir():
            return []
        found = []
        for entry in sorted(root.iterdir()):
            try:
                if (user_media_db_path(self.data_dir, entry.name)).is_file():
                    found.append(entry.name)
            except InvalidInput:
                continue    # not a user id, or a symlinked escape
        return found

    def close_all(self) -> None:
        with self._lock:
            dbs, self._dbs = list(self._dbs.values()), {}
        for db in dbs:
            db.close()
