"""Files API storage: create/get/content round trips, OpenAI's file object, per-user isolation of
records and blobs, one blob per content per user (removed with its last record, also under
concurrent creates and deletes), size limit and quota, purpose and filename rules, keyset paging,
damaged blobs, refused user ids and symlink escapes, expiry. SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from support import SteppingClock

from tldw_Server_API.app.core.errors import InvalidInput, NotFound, PayloadTooLarge, QuotaExceeded
from tldw_Server_API.app.core.Files.files_db import FileContentUnavailable, FileRecord, FilesDB


def make_db(url: str, tmp_path: Path, *, max_bytes: int = 1024, **extra: object) -> FilesDB:
    return FilesDB(url, tmp_path / "data", max_bytes=max_bytes, **extra)  # type: ignore[arg-type]


def blob_dir(tmp_path: Path, user: str) -> Path:
    return tmp_path / "data" / "files" / user


def entries(tmp_path: Path, user: str) -> list[str]:
    """Every name in the user's blob directory, hidden temp or retired files included."""
    directory = blob_dir(tmp_path, user)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_create_get_content_round_trip(jobs_db_url: str, tmp_path: Path) -> None:
    clock = SteppingClock()
    db = make_db(jobs_db_url, tmp_path, clock=clock)
    record = db.create("alice", "notes.txt", "assistants", b"hello files")
    assert (record.user_id, record.filename, record.purpose, record.bytes) == ("alice", "notes.txt", "assistants", 11)
    assert (record.content_hash, record.created_at, record.expires_at) == (sha(b"hello files"), clock.now, None)
    assert db.get("alice", record.id) == record
    assert db.content("alice", record.id) == b"hello files"
    path = db.path("alice", record.id)
    assert path == (tmp_path / "data").resolve() / "files" / "alice" / record.content_hash
    assert path.read_bytes() == b"hello files"
    assert entries(tmp_path, "alice") == [record.content_hash]   # no temp file left behind


def test_ids_and_openai_object_shape(jobs_db_url: str, tmp_path: Path) -> None:
    clock = SteppingClock()
    db = make_db(jobs_db_url, tmp_path, clock=clock)
    records = [db.create("alice", f"f{i}.jsonl", "batch", b"{}") for i in range(5)]
    assert all(re.fullmatch(r"file-[0-9a-f]{24}", r.id) for r in records)
    assert len({r.id for r in records}) == 5
    created = int(clock.now.timestamp())
    assert records[0].to_dict() == {
        "id": records[0].id, "object": "file", "bytes": 2, "created_at": created, "filename": "f0.jsonl",
        "purpose": "batch", "status": "processed", "expires_at": None, "status_details": None,
        "content_hash": sha(b"{}"),
    }
    expiring = db.create("alice", "e.jsonl", "batch", b"{}", expires_after=3600)
    assert expiring.to_dict()["expires_at"] == created + 3600
    assert db.get("alice", expiring.id).expires_at == clock.now + timedelta(seconds=3600)
    for seconds in (3599, 30 * 86400 + 1):
        with pytest.raises(InvalidInput) as err:
            db.create("alice", "e.jsonl", "batch", b"{}", expires_after=seconds)
        assert err.value.param == "expires_after"


def test_users_are_isolated(jobs_db_url: str, tmp_path: Path) -> None:
    db = make_db(jobs_db_url, tmp_path)
    mine = db.create("alice", "a.txt", "user_data", b"same bytes")
    theirs = db.create("bob", "b.txt", "user_data", b"same bytes")
    missing = "file-" + "0" * 24
    for call in (db.get, db.content, db.path, db.delete):
        for file_id in (mine.id, missing):
            with pytest.raises(NotFound) as err:
                call("bob", file_id)
            # Another user's file and a missing one read alike: never reveal which.
            assert (err.value.param, err.value.message) == ("file_id", f"file {file_id!r} not found")
    assert db.page("bob")[0] == [theirs]
    assert entries(tmp_path, "alice") == entries(tmp_path, "bob") == [sha(b"same bytes")]   # separate blobs
    assert db.delete("alice", mine.id) is True
    assert entries(tmp_path, "alice") == []
    assert db.content("bob", theirs.id) == b"same bytes"


def test_same_content_twice_shares_one_blob(jobs_db_url: str, tmp_path: Path) -> None:
    db = make_db(jobs_db_url, tmp_path)
    first = db.create("alice", "one.txt", "assistants", b"duplicate")
    second = db.create("alice", "two.txt", "vision", b"duplicate")
    other = db.create("alice", "three.txt", "assistants", b"different")
    assert first.id != second.id and first.content_hash == second.content_hash
    assert entries(tmp_path, "alice") == sorted([sha(b"duplicate"), sha(b"different")])
    db.delete("alice", first.id)
    assert entries(tmp_path, "alice") == sorted([sha(b"duplicate"), sha(b"different")])
    assert db.content("alice", second.id) == b"duplicate"
    db.delete("alice", second.id)
    assert entries(tmp_path, "alice") == [sha(b"different")]   # no retired file left behind either
    with pytest.raises(NotFound):
        db.delete("alice", second.id)
    assert db.content("alice", other.id) == b"different"


def test_concurrent_creates_and_deletes_keep_every_record_readable(jobs_db_url: str, tmp_path: Path) -> None:
    """Threads upload, read and delete the same bytes at once: a delete that finds no other record
    must not remove the blob a concurrent create has just written for its record."""
    db = make_db(jobs_db_url, tmp_path)
    failures: list[BaseException] = []

    def churn() -> None:
        try:
            for _ in range(15):
                record = db.create("alice", "tmp.txt", "assistants", b"shared")
                assert db.content("alice", record.id) == b"shared"
                db.delete("alice", record.id)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert db.page("alice")[0] == []
    assert entries(tmp_path, "alice") == []   # the last delete took the blob; nothing retired is left


def test_size_limit(jobs_db_url: str, tmp_path: Path) -> None:
    db = make_db(jobs_db_url, tmp_path, max_bytes=10)
    with pytest.raises(PayloadTooLarge) as err:
        db.create("alice", "big.bin", "assistants", b"x" * 11)
    assert err.value.param == "file"
    with pytest.raises(InvalidInput) as empty:
        db.create("alice", "empty.bin", "assistants", b"")
    assert empty.value.param == "file"
    assert db.create("alice", "fits.bin", "assistants", b"x" * 10).bytes == 10
    assert entries(tmp_path, "alice") == [sha(b"x" * 10)]
    with pytest.raises(ValueError):
        make_db(jobs_db_url, tmp_path, max_bytes=0)


def test_quota_counts_every_record_of_the_user(jobs_db_url: str, tmp_path: Path) -> None:
    db = make_db(jobs_db_url, tmp_path, max_bytes=10, user_quota_bytes=20)
    first = db.create("alice", "a.bin", "assistants", b"a" * 10)
    db.create("alice", "b.bin", "assistants", b"a" * 10)   # the same bytes still count: quota is per record
    with pytest.raises(QuotaExceeded) as err:
        db.create("alice", "c.bin", "assistants", b"c")
    assert err.value.param == "file" and "20" in err.value.message
    assert len(db.page("alice")[0]) == 2
    assert entries(tmp_path, "alice") == [sha(b"a" * 10)]   # the refused upload left no blob
    assert db.create("bob", "c.bin", "assistants", b"c" * 10).bytes == 10   # bob's allowance is his own
    db.delete("alice", first.id)
    assert db.create("alice", "c.bin", "assistants", b"c" * 10).bytes == 10


def test_bad_purpose(jobs_db_url: str, tmp_path: Path) -> None:
    db = make_db(jobs_db_url, tmp_path)
    for purpose in ("fine_tune", "", "ASSISTANTS", "answers"):
        with pytest.raises(InvalidInput) as err:
            db.create("alice", "a.txt", purpose, b"data")
        assert err.value.param == "purpose"
    with pytest.raises(InvalidInput) as listing:
        db.page("alice", purpose="nope")
    assert listing.value.param == "purpose"
    assert {db.create("alice", "a.txt", p, b"data").purpose for p in
            ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")} == {
        "assistants", "batch", "fine-tune", "vision", "user_data", "evals"}


def test_path_like_names_keep_their_base_name_and_bad_names_are_refused(jobs_db_url: str, tmp_path: Path) -> None:
    db = make_db(jobs_db_url, tmp_path)
    for sent, kept in (("../x", "x"), ("../../etc/passwd", "passwd"), ("a/b/c.txt", "c.txt"),
                       ("C:\\Users\\me\\d.txt", "d.txt"), ("é t.pdf", "é t.pdf"), ("n" * 255, "n" * 255)):
        assert db.create("alice", sent, "assistants", b"data").filename == kept
    for bad in ("", "dir/", "..", ".", "../..", "   ", "a\x00b.txt", "a\nb.txt", "tab\t", "x\u2028y", "n" * 256):
        with pytest.raises(InvalidInput) as err:
            db.create("alice", bad, "assistants", b"data")
        assert err.value.param == "file", bad
    assert len(db.page("alice")[0]) == 6
    assert not (tmp_path / "data" / "etc").exists() and entries(tmp_path, "alice") == [sha(b"data")]


def test_paging(jobs_db_url: str, tmp_path: Path) -> None:
    clock = SteppingClock()
    db = make_db(jobs_db_url, tmp_path, clock=clock)
    made: list[FileRecord] = []
    for i in range(5):
        made.append(db.create("alice", f"{i}.txt", "batch" if i % 2 else "assistants", f"{i}".encode()))
        clock.advance()
    db.create("bob", "b.txt", "batch", b"bob")
    newest = list(reversed(made))
    page, more = db.page("alice", limit=2)
    assert (page, more) == (newest[:2], True)
    page, more = db.page("alice", limit=2, after=page[-1].id)
    assert (page, more) == (newest[2:4], True)
    page, more = db.page("alice", limit=2, after=page[-1].id)
    assert (page, more) == (newest[4:], False)
    assert db.page("alice", limit=3, order="asc") == (made[:3], True)
    assert db.page("alice", order="asc", after=made[2].id) == (made[3:], False)
    assert db.page("alice", purpose="batch") == ([made[3], made[1]], False)
    assert db.page("alice", purpose="assistants", limit=2, order="asc") == ([made[0], made[2]], True)
    assert db.page("alice", limit=10_000) == (newest, False)
    for kwargs, param in (({"limit": 0}, "limit"), ({"limit": 10_001}, "limit"), ({"after": "file-nope"}, "after"),
                          ({"order": "sideways"}, "order")):
        with pytest.raises(InvalidInput) as err:
            db.page("alice", **kwargs)
        assert err.value.param == param
    bob_file = db.page("bob")[0][0]
    with pytest.raises(InvalidInput):   # another user's id is no cursor
        db.page("alice", after=bob_file.id)


def test_damaged_or_missing_blob_is_reported(jobs_db_url: str, tmp_path: Path) -> None:
    db = make_db(jobs_db_url, tmp_path)
    record = db.create("alice", "a.txt", "assistants", b"original")
    blob = db.path("alice", record.id)
    for damage in (b"ORIGINAL", b"longer content", b""):   # same length, other length, truncated
        blob.write_bytes(damage)
        with pytest.raises(FileContentUnavailable) as err:
            db.content("alice", record.id)
        assert (err.value.code, err.value.param) == ("file_content_unavailable", "file_id")
    blob.unlink()
    with pytest.raises(FileContentUnavailable):
        db.content("alice", record.id)
    with pytest.raises(FileContentUnavailable):
        db.path("alice", record.id)
    db.create("alice", "again.txt", "assistants", b"original")   # uploading the bytes again heals the blob
    assert db.content("alice", record.id) == b"original"


@pytest.mark.parametrize("user_id", ["../evil", "", "a/b", "a.b", "x" * 65, "alice\x00"])
def test_invalid_user_id_is_refused(jobs_db_url: str, tmp_path: Path, user_id: str) -> None:
    db = make_db(jobs_db_url, tmp_path)
    calls = (lambda: db.create(user_id, "a.txt", "assistants", b"data"), lambda: db.get(user_id, "file-x"),
             lambda: db.content(user_id, "file-x"), lambda: db.page(user_id), lambda: db.delete(user_id, "file-x"))
    for call in calls:
        with pytest.raises(InvalidInput) as err:
            call()
        assert err.value.param == "user_id"
    assert not (tmp_path / "data").exists()   # nothing written anywhere


def test_symlinked_user_directory_is_refused(jobs_db_url: str, tmp_path: Path) -> None:
    db = make_db(jobs_db_url, tmp_path)
    db.create("bob", "b.txt", "assistants", b"bob's")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "data" / "files" / "mallory").symlink_to(outside)
    (tmp_path / "data" / "files" / "eve").symlink_to(blob_dir(tmp_path, "bob"))
    for user in ("mallory", "eve"):
        with pytest.raises(InvalidInput) as err:
            db.create(user, "a.txt", "assistants", b"data")
        assert err.value.param == "user_id"
    assert list(outside.iterdir()) == [] and entries(tmp_path, "bob") == [sha(b"bob's")]


def test_purge_expired(jobs_db_url: str, tmp_path: Path) -> None:
    clock = SteppingClock()
    db = make_db(jobs_db_url, tmp_path, clock=clock)
    expiring = db.create("alice", "e.txt", "batch", b"short-lived", expires_after=3600)
    kept = db.create("alice", "k.txt", "batch", b"kept")
    clock.advance(3599)
    assert db.purge_expired() == 0
    clock.advance(1)
    assert db.purge_expired() == 1
    with pytest.raises(NotFound):
        db.get("alice", expiring.id)
    assert db.page("alice")[0] == [kept] and entries(tmp_path, "alice") == [sha(b"kept")]


def test_an_expired_file_is_gone_before_the_sweep(jobs_db_url: str, tmp_path: Path) -> None:
    clock = SteppingClock()
    db = make_db(jobs_db_url, tmp_path, clock=clock)
    expiring = db.create("alice", "e.txt", "batch", b"short-lived", expires_after=3600)
    kept = db.create("alice", "k.txt", "batch", b"kept")
    clock.advance(3600)                                  # expired, not yet swept
    with pytest.raises(NotFound):
        db.get("alice", expiring.id)
    with pytest.raises(NotFound):
        db.content("alice", expiring.id)
    assert db.page("alice")[0] == [kept]
