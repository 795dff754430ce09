"""Storage of the OpenAI-compatible Files API (`file-` ids): records in SQL (SQLite or PostgreSQL,
through `_sql_engine`), content on disk as one blob per distinct content per user,
`<data_dir>/files/<user_id>/<sha256>`, shared by that user's records of the same bytes.
May import SQLAlchemy, `_sql_engine`, core errors and the user-id rule; no HTTP, and it never
parses what it stores. Callers run it in a worker thread (blocking I/O).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import tempfile
import unicodedata
from contextlib import suppress
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, Index, MetaData, String, Table, and_, delete, func, literal, or_, select
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.sql.elements import ColumnElement

from tldw_Server_API.app.core.AuthNZ.api_keys import validate_user_id
from tldw_Server_API.app.core.Embeddings._sql_engine import (
    Clock,
    Order,
    PageQuery,
    UTCDateTime,
    check_limit,
    engine_for,
    keyset_page,
    transaction,
    utc_now,
)
from tldw_Server_API.app.core.errors import InvalidInput, NotFound, PayloadTooLarge, QuotaExceeded, TLDWError

PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")   # OpenAI's
MAX_FILENAME_LENGTH = 255
MAX_FILES_PAGE = 10_000                                  # OpenAI's files list admits 1-10,000
EXPIRES_AFTER_RANGE_S = (3600, 30 * 86400)               # OpenAI's `expires_after.seconds` bounds
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_REFUSED_CHAR_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})   # controls (NUL...), lone surrogates, line breaks

_metadata = MetaData()
files_table = Table(
    "openai_files",
    _metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", String(64), nullable=False),
    Column("filename", String(MAX_FILENAME_LENGTH), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Index("ix_openai_files_user_created", "user_id", "created_at", "id"),
    Index("ix_openai_files_user_hash", "user_id", "content_hash"),
    Index("ix_openai_files_expires", "expires_at"),
)


class FileContentUnavailable(TLDWError):
    """A file record whose blob is missing or no longer matches its sha256 (damaged storage)."""

    code = "file_content_unavailable"


def new_file_id() -> str:
    """`file-<24 hex>`: 96 random bits, in OpenAI's `file-...` shape."""
    return f"file-{secrets.token_hex(12)}"


def clean_filename(name: str) -> str:
    """The base name of an uploaded file's name: a client may send a path (`../x` -> `x`,
    `C:\\dir\\a.txt` -> `a.txt`). InvalidInput for no name (`""`, `dir/`, `.`, `..`), control or
    line-break characters (NUL included) anywhere, or more than 255 characters."""
    if not isinstance(name, str) or any(unicodedata.category(ch) in _REFUSED_CHAR_CATEGORIES for ch in name):
        raise InvalidInput("filename must be text without control characters", param="file")
    base = re.split(r"[/\\]", name)[-1]
    if base.strip() in ("", ".", ".."):
        raise InvalidInput("filename must name a file", param="file")
    if len(base) > MAX_FILENAME_LENGTH:
        raise InvalidInput(f"filename must be at most {MAX_FILENAME_LENGTH} characters", param="file")
    return base


def blob_path(data_dir: Path, user_id: str, digest: str) -> Path:
    """`<data_dir>/files/<user_id>/<sha256>`, refused unless it resolves to exactly that path: a
    symlinked files dir, user dir or blob (outside the data dir, or to another user's) is an escape."""
    if not _SHA256_HEX.fullmatch(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    expected = Path(data_dir).resolve() / "files" / validate_user_id(user_id) / digest
    if expected.resolve() != expected:
        raise InvalidInput("the user's files path resolves elsewhere (symbolic link)", param="user_id")
    return expected


def _write_blob(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, os.replace: readers see whole old or whole new bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _lock_user(conn: Connection, user_id: str) -> None:
    """Serialise one user's creates and deletes until the transaction ends. SQLite needs nothing:
    its writers take turns (`transaction` in this process, the write lock across processes), and
    each writer here writes its row before it reads what it decides on."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(literal(f"openai-files:{user_id}")))))


def _check_purpose(purpose: str) -> None:
    if purpose not in PURPOSES:
        raise InvalidInput(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")


def _scope(user_id: str, file_id: str) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return files_table.c.id == file_id, files_table.c.user_id == user_id


@dataclass(frozen=True)
class FileRecord:
    id: str
    user_id: str
    filename: str
    purpose: str
    bytes: int
    content_hash: str
    created_at: datetime
    expires_at: datetime | None

    @classmethod
    def from_row(cls, row: RowMapping) -> FileRecord:
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's file object, plus `content_hash`."""
        expires = None if self.expires_at is None else int(self.expires_at.timestamp())
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at.timestamp()),
                "filename": self.filename, "purpose": self.purpose, "status": "processed", "expires_at": expires,
                "status_details": None, "content_hash": self.content_hash}


class FilesDB:
    """File records and their blobs, scoped per user. Thread-safe; one shared engine per URL.

    The blob rule: a user's creates and deletes hold that user's lock (`_lock_user`) and do their
    disk work before the commit. Create inserts the row, checks the quota, then writes the blob
    (rewriting a shared blob writes identical bytes: harmless, and it heals a damaged one). Delete
    removes the row, counts the user's remaining rows of that hash and, at zero, moves the blob
    aside, unlinking it after the commit (or putting it back if the commit fails). So no create
    can slip between a delete's count and its unlink. A create whose commit fails after its write
    may leave an unreferenced blob: harmless, and rewritten by the next upload of those bytes.
    The quota counts every record's bytes (what the user's list shows), not the deduplicated disk use.
    """

    def __init__(self, url: str, data_dir: Path, *, max_bytes: int, user_quota_bytes: int = 0,
                 clock: Clock = utc_now) -> None:
        if max_bytes < 1 or user_quota_bytes < 0:
            raise ValueError("max_bytes must be >= 1 and user_quota_bytes >= 0 (0: no quota)")
        self.engine = engine_for(url)
        self.data_dir = Path(data_dir)
        self.max_bytes = max_bytes
        self.user_quota_bytes = user_quota_bytes
        self._clock = clock
        _metadata.create_all(self.engine)

    def create(self, user_id: str, filename: str, purpose: str, data: bytes, *,
               expires_after: int | None = None) -> FileRecord:
        """Store `data` as a new file of the user (its name reduced to the base name, see
        `clean_filename`). `expires_after`: seconds from now (OpenAI's 3600-2592000) until
        `purge_expired` may remove it. PayloadTooLarge over `max_bytes`; QuotaExceeded when the
        user's files would pass `user_quota_bytes` (decided under the user's lock)."""
        name = clean_filename(filename)
        _check_purpose(purpose)
        size = len(data)
        if size == 0:
            raise InvalidInput("the file is empty", param="file")
        if size > self.max_bytes:
            raise PayloadTooLarge(f"the file has {size} bytes, more than the {self.max_bytes} allowed", param="file")
        low, high = EXPIRES_AFTER_RANGE_S
        if expires_after is not None and not low <= expires_after <= high:
            raise InvalidInput(f"expires_after must be {low}-{high} seconds", param="expires_after")
        digest = hashlib.sha256(data).hexdigest()
        blob = blob_path(self.data_dir, user_id, digest)   # validates the user id
        now = self._clock()
        expires_at = None if expires_after is None else now + timedelta(seconds=expires_after)
        record = FileRecord(new_file_id(), user_id, name, purpose, size, digest, now, expires_at)
        with transaction(self.engine) as conn:
            _lock_user(conn, user_id)
            conn.execute(files_table.insert().values(**asdict(record)))
            self._check_quota(conn, user_id, size)
            _write_blob(blob, data)
            return self._read(conn, user_id, record.id)

    def get(self, user_id: str, file_id: str) -> FileRecord:
        """The caller's file; NotFound for a missing id or another user's (never saying which)."""
        validate_user_id(user_id)
        with transaction(self.engine) as conn:
            record = self._read(conn, user_id, file_id)
        if record.expires_at is not None and record.expires_at <= self._clock():
            raise NotFound(f"file {file_id!r} not found", param="file_id")   # expired: gone, whether swept yet or not
        return record

    def content(self, user_id: str, file_id: str) -> bytes:
        """The file's bytes, checked against its sha256; FileContentUnavailable when the blob is
        missing or damaged (NotFound when the record itself went meanwhile)."""
        record = self.get(user_id, file_id)
        try:
            data: bytes | None = blob_path(self.data_dir, user_id, record.content_hash).read_bytes()
        except OSError:
            data = None
        if data is None or len(data) != record.bytes or hashlib.sha256(data).hexdigest() != record.content_hash:
            self.get(user_id, file_id)
            raise FileContentUnavailable(f"the content of file {file_id!r} is unavailable on the server",
                                         param="file_id")
        return data

    def path(self, user_id: str, file_id: str) -> Path:
        """Where the file's blob lies, to stream it (not hashed here: `content` checks);
        FileContentUnavailable when it is missing. Read-only for the caller: records share blobs."""
        record = self.get(user_id, file_id)
        path = blob_path(self.data_dir, user_id, record.content_hash)
        if not path.is_file():
            raise FileContentUnavailable(f"the content of file {file_id!r} is unavailable on the server",
                                         param="file_id")
        return path

    def page(self, user_id: str, *, limit: int = 20, after: str | None = None, order: Order = "desc",
             purpose: str | None = None) -> tuple[list[FileRecord], bool]:
        """One OpenAI list page of the caller's files by (created_at, id), optionally of one purpose,
        and `has_more`. `after` is a file id from an earlier page of the same listing."""
        validate_user_id(user_id)
        check_limit(limit, MAX_FILES_PAGE)
        c = files_table.c
        scope: ColumnElement[bool] = and_(c.user_id == user_id,
                                          or_(c.expires_at.is_(None), c.expires_at > self._clock()))
        if purpose is not None:
            _check_purpose(purpose)
            scope = and_(scope, c.purpose == purpose)
        with transaction(self.engine) as conn:
            rows, has_more = keyset_page(conn, files_table, scope, PageQuery(limit=limit, order=order, after=after))
        return [FileRecord.from_row(row) for row in rows], has_more

    def delete(self, user_id: str, file_id: str) -> bool:
        """Remove the caller's file (NotFound when there is none); its blob goes too when no other
        record of the user holds the same bytes (the blob rule above). True: OpenAI's `deleted`."""
        validate_user_id(user_id)
        retired: tuple[Path, Path] | None = None
        try:
            with transaction(self.engine) as conn:
                _lock_user(conn, user_id)
                record = self._read(conn, user_id, file_id)
                if conn.execute(delete(files_table).where(*_scope(user_id, file_id))).rowcount != 1:
                    raise NotFound(f"file {file_id!r} not found", param="file_id")
                retired = self._retire_if_unshared(conn, record)
        except BaseException:
            if retired is not None:   # the commit failed: the record is back and needs its blob
                with suppress(OSError):
                    os.replace(retired[1], retired[0])
            raise
        if retired is not None:
            retired[1].unlink(missing_ok=True)
        return True

    def purge_expired(self) -> int:
        """Delete every file whose `expires_at` has passed (a periodic sweep); how many went."""
        c = files_table.c
        with transaction(self.engine) as conn:
            due = conn.execute(select(c.user_id, c.id).where(c.expires_at.is_not(None),
                                                             c.expires_at <= self._clock())).all()
        purged = 0
        for user_id, file_id in due:
            with suppress(NotFound):
                purged += self.delete(user_id, file_id)
        return purged

    def _check_quota(self, conn: Connection, user_id: str, size: int) -> None:
        """After the insert, under the user's lock: the user's total, this file included."""
        if self.user_quota_bytes <= 0:
            return
        c = files_table.c
        used = int(conn.execute(select(func.coalesce(func.sum(c.bytes), 0)).where(c.user_id == user_id)).scalar_one())
        if used > self.user_quota_bytes:
            raise QuotaExceeded(f"this file has {size} bytes and {used - size} of the {self.user_quota_bytes}-byte "
                                "file quota are in use: delete files to make room", param="file")

    def _retire_if_unshared(self, conn: Connection, record: FileRecord) -> tuple[Path, Path] | None:
        """Under the user's lock, after the delete: with no other record of the user holding these
        bytes, move the blob aside; (blob, aside) for the caller to unlink after the commit."""
        c = files_table.c
        others = conn.execute(select(func.count()).select_from(files_table).where(
            c.user_id == record.user_id, c.content_hash == record.content_hash)).scalar_one()
        if others:
            return None
        blob = blob_path(self.data_dir, record.user_id, record.content_hash)
        aside = blob.with_name(f".{blob.name}.{secrets.token_hex(8)}.deleted")
        try:
            os.replace(blob, aside)
        except FileNotFoundError:
            return None
        return blob, aside

    @staticmethod
    def _read(conn: Connection, user_id: str, file_id: str) -> FileRecord:
        row = conn.execute(select(files_table).where(*_scope(user_id, file_id))).mappings().first()
        if row is None:
            raise NotFound(f"file {file_id!r} not found", param="file_id")
        return FileRecord.from_row(row)
