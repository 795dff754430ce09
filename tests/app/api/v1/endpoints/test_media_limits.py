"""Resource bounds of ingestion (hardening defect 6): a per-upload chunk cap (413, nothing stored),
a per-user storage quota (429 `quota_exceeded`, nothing stored; deleting makes room again), the
same cap on a job that re-chunks existing media, and a batch start whose every id is refused
answers an error instead of 202 "rejected". The media DB upgrades version-1 files in place.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support import Caller, assert_openai_error, key_of, make_settings, wait_for_jobs, write_keys_file

from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDB
from tldw_Server_API.app.main import create_app

MAX_CHUNKS = 20
QUOTA = 4000
USERS = ["limits-a", "limits-b", "limits-c", "limits-d"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("limits")
    keys = write_keys_file(data, {u: key_of(u) for u in USERS})
    settings = make_settings(data / "data", tiktoken_dir, api_keys_file=keys, single_user_api_key=None,
                             chromadb_force_stub=True, chunking_max_chunks=MAX_CHUNKS,
                             media_user_quota_bytes=QUOTA)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def media_total(caller: Caller) -> int:
    return int(caller.get("/api/v1/media").json()["total"])


def test_an_upload_over_the_chunk_cap_is_a_413_and_stores_nothing(client: TestClient) -> None:
    alice = Caller(client, "limits-a")
    words = " ".join(f"w{i}" for i in range(300))
    response = alice.post("/api/v1/media/add", json={"content": words, "chunk_size": 10, "chunk_overlap": 0,
                                                           "chunk_method": "words"})
    error = assert_openai_error(response, 413, param="chunk_size")
    assert "30 chunks" in error["message"] and str(MAX_CHUNKS) in error["message"]
    upload = alice.post("/api/v1/media/add", files={"file": ("w.txt", words.encode(), "text/plain")},
                        data={"chunk_size": "5", "chunk_overlap": "0", "chunk_method": "words"})
    assert_openai_error(upload, 413, param="chunk_size")
    assert media_total(alice) == 0
    ok = alice.post("/api/v1/media/add", json={"content": words, "chunk_size": 20, "chunk_overlap": 0,
                                                     "chunk_method": "words"})
    assert ok.status_code == 201, ok.text


def test_a_job_that_would_exceed_the_chunk_cap_fails_with_the_reason(client: TestClient) -> None:
    bob = Caller(client, "limits-b")
    words = " ".join(f"w{i}" for i in range(300))
    added = bob.post("/api/v1/media/add", json={"content": words, "generate_embeddings": False}).json()
    job = bob.post(f"/api/v1/media/{added['media_id']}/embeddings", json={"chunk_size": 5, "chunk_overlap": 0,
                                                                             "chunk_method": "words"})
    assert job.status_code == 202, job.text
    wait_for_jobs(client)
    record = bob.get(f"/api/v1/media/embeddings/jobs/{job.json()['job_id']}").json()
    assert record["status"] == "failed" and "CHUNKING_MAX_CHUNKS" in record["error"], record


def test_the_storage_quota_is_a_429_until_media_are_deleted(client: TestClient) -> None:
    carol = Caller(client, "limits-c")
    first = carol.post("/api/v1/media/add", json={"content": "a" * 3000, "generate_embeddings": False})
    assert first.status_code == 201, first.text
    over = carol.post("/api/v1/media/add", json={"content": "b" * 1500, "generate_embeddings": False})
    error = assert_openai_error(over, 429, code="quota_exceeded")
    assert error["type"] == "insufficient_quota" and str(QUOTA) in error["message"]
    assert media_total(carol) == 1
    other = Caller(client, "limits-d")   # the quota is per user
    response = other.post("/api/v1/media/add", json={"content": "c" * 3500, "generate_embeddings": False})
    assert response.status_code == 201, response.text
    assert carol.delete(f"/api/v1/media/{first.json()['media_id']}").status_code == 200
    again = carol.post("/api/v1/media/add", json={"content": "b" * 1500, "generate_embeddings": False})
    assert again.status_code == 201, again.text


def test_a_batch_whose_every_id_is_refused_is_an_error_not_a_202(client: TestClient) -> None:
    alice = Caller(client, "limits-a")
    response = alice.post("/api/v1/media/embeddings/batch", json={"media_ids": [987654, 987655]})
    assert_openai_error(response, 404, param="media_ids")


def test_a_version_1_media_db_is_upgraded_with_its_sizes_counted(tmp_path: Path) -> None:
    path = tmp_path / "media.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE media (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, content TEXT NOT NULL,
            content_hash TEXT NOT NULL, media_type TEXT NOT NULL, source_filename TEXT,
            chunk_count INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
            deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)), deleted_at TEXT);
        INSERT INTO media (title, content, content_hash, media_type, created_at, updated_at)
            VALUES ('old', 'héllo', 'x', 'text', '2025-01-01', '2025-01-01');
        PRAGMA user_version=1;""")
    conn.close()
    db = MediaDB(path)
    assert db.stored_bytes() == len("héllo".encode())
    db.add_media("new", "abc", "text")
    assert db.stored_bytes() == len("héllo".encode()) + 3


def test_a_version_2_media_db_with_chunks_gains_pages_and_keeps_its_chunks(tmp_path: Path) -> None:
    path = tmp_path / "media.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE media (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL, content TEXT NOT NULL,
            content_hash TEXT NOT NULL, content_bytes INTEGER NOT NULL DEFAULT 0, media_type TEXT NOT NULL,
            source_filename TEXT, chunk_count INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)), deleted_at TEXT);
        CREATE TABLE media_chunks (id INTEGER PRIMARY KEY, media_id INTEGER NOT NULL REFERENCES media (id)
            ON DELETE CASCADE, chunk_index INTEGER NOT NULL, start_char INTEGER NOT NULL, end_char INTEGER NOT NULL,
            text TEXT NOT NULL, UNIQUE (media_id, chunk_index));
        INSERT INTO media (title, content, content_hash, content_bytes, media_type, chunk_count, created_at,
            updated_at) VALUES ('old', 'hello world', 'x', 11, 'text', 1, '2025-01-01', '2025-01-01');
        INSERT INTO media_chunks (media_id, chunk_index, start_char, end_char, text)
            VALUES (1, 0, 0, 11, 'hello world');
        PRAGMA user_version=2;""")
    conn.close()
    db = MediaDB(path)
    [chunk] = db.list_chunks(1)
    assert (chunk.text, chunk.page) == ("hello world", None) and db.get_media(1).page_starts is None
    paged = db.add_media("pdf", "page one\n\npage two", "pdf", page_starts=[0, 10])
    assert db.get_media(paged.id).page_starts == (0, 10)
