"""The per-user media store on real SQLite files: add/get/list paging, soft delete (gone from FTS at
once), atomic chunk replacement without duplicates, BM25 search that never chokes on user syntax,
user isolation and user-id/path validation, the factory, threads, and reopening."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tldw_Server_API.app.core.Chunking import Chunk, ChunkingOptions, chunk_text
from tldw_Server_API.app.core.DB_Management.Media_DB import (
    SCHEMA_VERSION,
    MediaDB,
    MediaDBFactory,
    user_media_db_path,
)
from tldw_Server_API.app.core.errors import InvalidInput, NotFound, ServiceUnavailable

START = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


class StepClock:
    """Each call is one second after the previous one."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> datetime:
        self.calls += 1
        return START + timedelta(seconds=self.calls - 1)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[MediaDB]:
    media_db = MediaDB.for_user(tmp_path, "alice", clock=StepClock())
    yield media_db
    media_db.close()


def add_chunked(db: MediaDB, title: str, content: str, size: int = 5, overlap: int = 0) -> int:
    record = db.add_media(title, content, "text", f"{title}.txt")
    db.replace_chunks(record.id, chunk_text(content, ChunkingOptions("words", size, overlap)))
    return record.id


def test_add_and_get(db: MediaDB, tmp_path: Path) -> None:
    record = db.add_media("  Notes ", "Hello 東京 👍🏽", "text", "notes.txt")
    assert db.path == tmp_path.resolve() / "users" / "alice" / "media.db" and db.path.is_file()
    assert (record.title, record.content, record.media_type, record.source_filename) == (
        "Notes", "Hello 東京 👍🏽", "text", "notes.txt")
    assert record.content_hash == hashlib.sha256("Hello 東京 👍🏽".encode()).hexdigest()
    assert record.created_at == record.updated_at == START
    assert not record.deleted and record.deleted_at is None and record.chunk_count == 0
    assert db.get_media(record.id) == record
    assert db.add_media("", "x", "text").title == "Untitled"


def test_add_refuses_empty_content_and_type(db: MediaDB) -> None:
    for content, media_type, param in [("", "text", "content"), (" \n", "text", "content"), ("x", " ", "media_type")]:
        with pytest.raises(InvalidInput) as caught:
            db.add_media("t", content, media_type)
        assert caught.value.param == param


def test_get_missing_is_not_found(db: MediaDB) -> None:
    with pytest.raises(NotFound):
        db.get_media(12345)


def test_list_pages_newest_first_and_skips_deleted(db: MediaDB) -> None:
    ids = [db.add_media(f"m{i}", f"content {i}", "text").id for i in range(5)]
    page, total = db.list_media(limit=2, offset=0)
    assert [m.id for m in page] == [ids[4], ids[3]] and total == 5
    assert not hasattr(page[0], "content")
    page, total = db.list_media(limit=2, offset=4)
    assert [m.id for m in page] == [ids[0]] and total == 5
    assert db.list_media(limit=10, offset=50) == ([], 5)
    db.soft_delete(ids[3])
    page, total = db.list_media(limit=10, offset=0)
    assert [m.id for m in page] == [ids[4], ids[2], ids[1], ids[0]] and total == 4
    for limit, offset, param in [(0, 0, "limit"), (1001, 0, "limit"), (10, -1, "offset")]:
        with pytest.raises(InvalidInput) as caught:
            db.list_media(limit=limit, offset=offset)
        assert caught.value.param == param


def test_soft_delete_hides_media_and_its_chunks_at_once(db: MediaDB) -> None:
    gone = add_chunked(db, "gone", "zebra crossing at night " * 3)
    kept = add_chunked(db, "kept", "zebra herd on the plain")
    assert {h.media_id for h in db.search_chunks_fts("zebra", limit=10)} == {gone, kept}
    db.soft_delete(gone)
    assert {h.media_id for h in db.search_chunks_fts("zebra", limit=10)} == {kept}
    assert db.search_chunks_fts("crossing", limit=10) == []
    assert db.search_chunks_fts("crossing", limit=10, media_ids=[gone]) == []
    with closing(sqlite3.connect(db.path)) as raw:  # the index itself forgot it, not just the query filter
        assert raw.execute("SELECT COUNT(*) FROM media_chunks WHERE media_id = ?", (gone,)).fetchone()[0] == 0
        fts_rows = raw.execute("SELECT COUNT(*) FROM media_chunks_fts WHERE media_chunks_fts MATCH 'crossing'")
        assert fts_rows.fetchone()[0] == 0
    with pytest.raises(NotFound):
        db.get_media(gone)
    deleted = db.get_media(gone, include_deleted=True)
    assert deleted.deleted and deleted.deleted_at is not None and deleted.deleted_at > deleted.created_at
    assert db.list_deleted_media_ids() == [gone]
    for media_id in (gone, 999):
        with pytest.raises(NotFound):
            db.soft_delete(media_id)
    with pytest.raises(NotFound):
        db.replace_chunks(gone, [])
    with pytest.raises(NotFound):
        db.list_chunks(gone)


def test_replace_chunks_replaces_without_duplicates(db: MediaDB) -> None:
    content = "alpha beta gamma delta epsilon zeta eta theta iota kappa"
    media_id = add_chunked(db, "greek", content, size=3, overlap=1)
    first = db.list_chunks(media_id)
    assert first == chunk_text(content, ChunkingOptions("words", 3, 1))
    assert db.get_media(media_id).chunk_count == len(first)
    db.replace_chunks(media_id, first)
    assert len(db.search_chunks_fts("kappa", limit=50)) == 1
    bigger = chunk_text(content, ChunkingOptions("words", 100, 0))
    db.replace_chunks(media_id, bigger)
    hits = db.search_chunks_fts("alpha", limit=50)
    assert [(h.chunk_index, h.start_char, h.end_char, h.text) for h in hits] == [(0, 0, len(content), content)]
    assert db.get_media(media_id).chunk_count == 1


def test_replace_chunks_refuses_bad_chunks_and_keeps_the_old_ones(db: MediaDB) -> None:
    content = "one two three four"
    media_id = add_chunked(db, "n", content, size=2)
    before = db.list_chunks(media_id)
    bad_sets = [
        [Chunk(0, "one two", 0, 7), Chunk(1, "THREE", 8, 13)],
        [Chunk(0, "one two", 0, 7), Chunk(0, "three four", 8, 18)],
        [Chunk(0, "four", 14, 99)],
    ]
    for chunks in bad_sets:
        with pytest.raises(InvalidInput) as caught:
            db.replace_chunks(media_id, chunks)
        assert caught.value.param == "chunks"
        assert db.list_chunks(media_id) == before
    db.replace_chunks(media_id, [])
    assert db.list_chunks(media_id) == [] and db.search_chunks_fts("one", limit=5) == []


def test_search_ranks_by_bm25_and_carries_offsets(db: MediaDB) -> None:
    content = "the kestrel hovers. " + "filler words only here. " * 3 + "kestrel kestrel kestrel again."
    media_id = db.add_media("Birds", content, "text").id
    db.replace_chunks(media_id, chunk_text(content, ChunkingOptions("sentences", 1, 0)))
    other = add_chunked(db, "Other", "a kestrel elsewhere with many many other words around it")
    hits = db.search_chunks_fts("Kestrel", limit=10)
    assert hits[0].media_id == media_id and hits[0].text == "kestrel kestrel kestrel again."
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True) and hits[-1].score > 0
    for hit in hits:
        source = db.get_media(hit.media_id).content
        assert source[hit.start_char:hit.end_char] == hit.text
        assert hit.title == ("Birds" if hit.media_id == media_id else "Other")
    assert len(db.search_chunks_fts("kestrel", limit=1)) == 1
    assert {h.media_id for h in db.search_chunks_fts("kestrel", limit=10, media_ids=[other])} == {other}
    assert db.search_chunks_fts("kestrel", limit=10, media_ids=[]) == []
    assert db.search_chunks_fts("hovers missingword", limit=10, match_all=True) == []
    assert len(db.search_chunks_fts("hovers missingword", limit=10)) == 1


@pytest.mark.parametrize(
    "query",
    ['"', '"unbalanced', "(", "a AND", "AND", "OR NOT", "*", "caf*", "NEAR(a b)", "text:cafe",
     "'; DROP TABLE media; --", "東京", "🙂", "e\u0301", "^x", "-x", "+", "{a b}", ":", "a) OR (b", "\x00", "NOT café"],
)
def test_odd_queries_never_raise(db: MediaDB, query: str) -> None:
    add_chunked(db, "t", "Un café à Tokyo: 東京 tower 🙂 and a b c (parens) NEAR text")
    db.search_chunks_fts(query, limit=5)


def test_query_semantics_quotes_prefix_and_diacritics(db: MediaDB) -> None:
    add_chunked(db, "t", "Un café près de la gare and football", size=50)
    assert len(db.search_chunks_fts('"CAFE" (gare)', limit=5)) == 1
    assert len(db.search_chunks_fts("foot*", limit=5)) == 1
    assert db.search_chunks_fts("foot", limit=5) == []
    assert db.search_chunks_fts("?!", limit=5) == []
    for blank in ["", "   "]:
        with pytest.raises(InvalidInput):
            db.search_chunks_fts(blank, limit=5)
    with pytest.raises(InvalidInput):
        db.search_chunks_fts("cafe", limit=0)


def test_arbitrary_queries_never_raise(tmp_path: Path) -> None:
    media_db = MediaDB.for_user(tmp_path, "prop")
    add_chunked(media_db, "t", "mixed 東京 text with café and émoji 🙂 and punctuation (a) [b] {c} \"d\"")

    @settings(max_examples=300, deadline=None)
    @given(st.text(min_size=1).filter(str.strip))
    def check(query: str) -> None:
        media_db.search_chunks_fts(query, limit=5)

    try:
        check()
    finally:
        media_db.close()


@pytest.mark.parametrize("user_id", ["../x", "a/b", "", "a" * 65, "a b", "alice\n", "..", "x\\y", "é"])
def test_bad_user_ids_are_refused(tmp_path: Path, user_id: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        MediaDBFactory(tmp_path).get(user_id)
    assert caught.value.param == "user_id"
    assert not (tmp_path / "users").exists() or not any((tmp_path / "users").iterdir())


def test_user_ids_at_the_limits_are_accepted(tmp_path: Path) -> None:
    assert user_media_db_path(tmp_path, "A" * 64).parent.name == "A" * 64
    assert user_media_db_path(tmp_path, "user_1-x").parent.name == "user_1-x"


def test_symlinked_user_dirs_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    users = tmp_path / "data" / "users"
    (users / "alice").mkdir(parents=True)
    os.symlink(outside, users / "mallory")
    os.symlink(users / "alice", users / "eve")  # inside the data dir, but another user's store
    for user_id in ("mallory", "eve"):
        with pytest.raises(InvalidInput):
            user_media_db_path(tmp_path / "data", user_id)
    assert user_media_db_path(tmp_path / "data", "alice") == users.resolve() / "alice" / "media.db"


def test_users_are_isolated_and_factory_caches(tmp_path: Path) -> None:
    factory = MediaDBFactory(tmp_path)
    alice, bob = factory.get("alice"), factory.get("bob")
    try:
        assert factory.get("alice") is alice and alice.path != bob.path
        media_id = add_chunked(alice, "secret", "alice private walrus")
        assert bob.search_chunks_fts("walrus", limit=5) == []
        assert bob.list_media(10, 0) == ([], 0)
        with pytest.raises(NotFound):
            bob.get_media(media_id)
    finally:
        factory.close_all()
    with pytest.raises(ServiceUnavailable):
        alice.get_media(media_id)
    reopened = factory.get("alice")
    try:
        assert reopened is not alice and reopened.get_media(media_id).title == "secret"
        assert len(reopened.search_chunks_fts("walrus", limit=5)) == 1
    finally:
        factory.close_all()


def test_wal_mode_and_foreign_keys(db: MediaDB) -> None:
    with closing(sqlite3.connect(db.path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    db.close()
    db.close()  # idempotent


def test_concurrent_writers_and_readers(db: MediaDB) -> None:
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(25):
                media_id = add_chunked(db, f"w{worker}-{i}", f"worker{worker} item{i} shared words")
                assert db.get_media(media_id).chunk_count == 1
                db.search_chunks_fts("shared", limit=5)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert db.list_media(1, 0)[1] == 100
    assert len(db.search_chunks_fts("shared", limit=1000)) == 100


def test_live_media_ids_leaves_out_absent_and_deleted(db: MediaDB) -> None:
    ids = [db.add_media(f"t{i}", f"content {i}", "text").id for i in range(3)]
    db.soft_delete(ids[1])
    assert db.live_media_ids([*ids, 999, ids[0]]) == {ids[0], ids[2]}
    assert db.live_media_ids([]) == set()
    many = [db.add_media("m", f"c{i}", "text").id for i in range(600)]   # more than one IN (...) query
    assert db.live_media_ids(many) == set(many)
