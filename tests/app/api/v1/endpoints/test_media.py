"""HTTP tests of the host media routes (`/api/v1/media`) on the real app (TestClient, lifespan run,
in-memory vector store): uploads (.txt, .md, .html) and JSON adds, every bad input of issue #4 (a
clear 4xx in OpenAI's error shape that writes no media, no job and no vector), the upload cap (413),
paging, soft delete with and without `purge_vectors`, and isolation (another user gets 404).
Each test runs as a fresh user of one module-wide app, so absolute counts hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import WORD_CHUNKING, Caller, key_of, make_settings, wait_for_jobs, write_keys_file
from support import assert_openai_error as shared_assert_openai_error

from tldw_Server_API.app.main import create_app

CAP = 64 * 1024                      # the configured media_max_upload_bytes of the module's app
USERS = [f"media-user-{i:02d}" for i in range(80)]
WORDS = " ".join(f"word{i}" for i in range(35))   # 35 words: 4 chunks of 10 without overlap
HTML = (
    "<html><head><title>Tide tables</title><style>body{color:red}</style><script>var x = 1;</script></head>"
    "<body><h1>Tides</h1><p>The moon pulls the ocean &amp; makes tides.</p><ul><li>high</li><li>low</li></ul>"
    "</body></html>"
)


def assert_openai_error(response: Any, status: int, code: str | None = None, param: str | None = None) -> None:
    """Every media error is an invalid-request error in OpenAI's shape."""
    error = shared_assert_openai_error(response, status, code, param)
    assert error["type"] == "invalid_request_error", error


def vector_count(client: TestClient, user_id: str, media_id: int | None = None) -> int:
    store = client.app.state.services.storage.vector_stores.for_user(user_id)  # type: ignore[attr-defined]
    where = None if media_id is None else {"media_id": media_id}
    return sum(store.count(name, where) for name in store.list_collections())


def assert_nothing_written(caller: Caller) -> None:
    """No media, no job, no vector for the caller, and the server still answers valid requests."""
    media = caller.get("/api/v1/media")
    assert media.status_code == 200 and media.json()["total"] == 0 and media.json()["items"] == [], media.text
    jobs = caller.get("/api/v1/media/embeddings/jobs")
    assert jobs.status_code == 200 and jobs.json()["total"] == 0, jobs.text
    assert vector_count(caller.client, caller.user_id) == 0


def add_text(caller: Caller, content: str, **fields: Any) -> dict[str, Any]:
    fields.setdefault("generate_embeddings", False)
    response = caller.post("/api/v1/media/add", json={"content": content, **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("media")
    keys = write_keys_file(data, {u: key_of(u) for u in USERS})
    settings = make_settings(
        data / "data", tiktoken_dir, api_keys_file=keys, single_user_api_key=None,
        chromadb_force_stub=True, media_max_upload_bytes=CAP, auto_download_models=False, **WORD_CHUNKING,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def free_users(client: TestClient) -> Iterator[str]:  # noqa: ARG001 - the users of that app
    return iter(USERS)


@pytest.fixture
def new_caller(client: TestClient, free_users: Iterator[str]) -> Callable[[], Caller]:
    return lambda: Caller(client, next(free_users))


@pytest.fixture
def caller(new_caller: Callable[[], Caller]) -> Caller:
    return new_caller()


# --- adding media -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "raw", "title", "expected"),
    [
        ("notes.txt", b"plain text\r\nsecond line", "notes", "plain text\nsecond line"),
        ("readme.md", "# Heading\n\n*café* text".encode(), "readme", "# Heading\n\n*café* text"),
        ("tides.html", HTML.encode(), "Tide tables", "Tides\n\nThe moon pulls the ocean & makes tides.\n\nhigh\nlow"),
    ],
    ids=["txt", "md", "html"],
)
def test_upload_stores_text_title_and_content_hash(
    caller: Caller, name: str, raw: bytes, title: str, expected: str
) -> None:
    response = caller.post("/api/v1/media/add", files={"file": (name, raw)}, data={"generate_embeddings": "false"})
    assert response.status_code == 201, response.text
    added = response.json()
    assert added["title"] == title and added["job_id"] is None and added["embedding_status"] is None
    assert added["content_hash"] == hashlib.sha256(expected.encode()).hexdigest()
    item = caller.get(f"/api/v1/media/{added['media_id']}").json()
    assert item["content"] == expected and item["source_filename"] == name
    assert item["content_hash"] == added["content_hash"] and item["chunk_count"] >= 1
    assert caller.get("/api/v1/media/embeddings/jobs").json()["total"] == 0


def test_upload_title_field_overrides_the_file_name(caller: Caller) -> None:
    response = caller.post("/api/v1/media/add", files={"file": ("a.txt", b"some words")},
                           data={"title": "My title", "generate_embeddings": "false"})
    assert response.status_code == 201 and response.json()["title"] == "My title", response.text


def test_json_add_stores_title_content_and_hash(caller: Caller) -> None:
    added = add_text(caller, "JSON content about glaciers.", title="Glaciers")
    item = caller.get(f"/api/v1/media/{added['media_id']}").json()
    assert (item["title"], item["content"], item["media_type"]) == ("Glaciers", "JSON content about glaciers.", "text")
    assert item["content_hash"] == added["content_hash"] == hashlib.sha256(b"JSON content about glaciers.").hexdigest()


def test_add_with_embeddings_returns_a_job_that_completes(caller: Caller) -> None:
    response = caller.post("/api/v1/media/add", files={"file": ("words.txt", WORDS.encode())},
                           data={"chunk_size": "10", "chunk_overlap": "0", "priority": "high"})
    assert response.status_code == 201, response.text
    added = response.json()
    assert added["job_id"] and added["embedding_status"] == "queued"
    wait_for_jobs(caller.client)
    job = caller.get(f"/api/v1/media/embeddings/jobs/{added['job_id']}").json()
    assert job["status"] == "completed" and job["media_id"] == added["media_id"], job
    assert (job["chunk_size"], job["chunk_overlap"], job["priority"]) == (10, 0, "high")
    assert job["total_chunks"] == job["stored_chunks"] == 4 and job["progress"] == 100.0
    assert caller.get(f"/api/v1/media/{added['media_id']}").json()["chunk_count"] == 4
    assert vector_count(caller.client, caller.user_id, added["media_id"]) == 4


# --- bad inputs: a clear 4xx, nothing written ---------------------------------------------------------------
TEXT = "enough text to chunk " * 5
BAD_ADDS: dict[str, tuple[dict[str, Any], int, str, str | None]] = {
    "empty file": ({"files": {"file": ("empty.txt", b"")}}, 400, "invalid_value", "file"),
    "whitespace-only file": ({"files": {"file": ("blank.md", b"  \n\t ")}}, 400, "invalid_value", "file"),
    "unsupported type": (
        {"files": {"file": ("paper.doc", b"\xd0\xcf\x11\xe0 binary")}}, 415, "unsupported_media_type", "file"),
    "corrupt pdf": ({"files": {"file": ("paper.pdf", b"%PDF-1.7 binary")}}, 415, "unsupported_document", "file"),
    "exe": ({"files": {"file": ("setup.exe", b"MZ\x90\x00")}}, 415, "unsupported_media_type", "file"),
    "unknown content type": (
        {"files": {"file": ("blob", b"data", "application/octet-stream")}}, 415, "unsupported_media_type", "file"),
    "binary bytes in a .txt": ({"files": {"file": ("x.txt", b"abc\x00def")}}, 400, "invalid_value", "file"),
    "not utf-8": ({"files": {"file": ("x.txt", b"caf\xe9 \xff")}}, 400, "invalid_value", "file"),
    "no file part": ({"files": {"other": ("a.txt", b"hi")}}, 400, "invalid_value", "file"),
    "form chunk_size 0": (
        {"files": {"file": ("a.txt", TEXT.encode())}, "data": {"chunk_size": "0"}}, 400, "invalid_value", "chunk_size"),
    "form chunk_size not a number": (
        {"files": {"file": ("a.txt", TEXT.encode())}, "data": {"chunk_size": "ten"}}, 400, "invalid_value",
        "chunk_size"),
    "form generate_embeddings not a boolean": (
        {"files": {"file": ("a.txt", TEXT.encode())}, "data": {"generate_embeddings": "maybe"}}, 400,
        "invalid_value", "generate_embeddings"),
    "form unknown field": (
        {"files": {"file": ("a.txt", TEXT.encode())}, "data": {"colour": "red"}}, 400, "invalid_value", "colour"),
    "json blank content": ({"json": {"content": "  \n "}}, 400, "invalid_value", "content"),
    "json missing content": ({"json": {"title": "t"}}, 400, "missing_required_parameter", "content"),
    "json content not a string": ({"json": {"content": 5}}, 400, "invalid_value", "content"),
    "json title too long": ({"json": {"title": "t" * 513, "content": TEXT}}, 400, "invalid_value", "title"),
    "json unknown field": ({"json": {"content": TEXT, "colour": "red"}}, 400, "invalid_value", "colour"),
    "json generate_embeddings not a boolean": (
        {"json": {"content": TEXT, "generate_embeddings": "yes"}}, 400, "invalid_value", "generate_embeddings"),
    "json body not an object": ({"content": b"[1, 2]"}, 400, "invalid_value", None),
    "invalid json": ({"content": b"{oops"}, 400, "invalid_value", None),
    "empty body": ({"content": b""}, 400, "invalid_value", None),
    "chunk_size 0": ({"json": {"content": TEXT, "chunk_size": 0}}, 400, "invalid_value", "chunk_size"),
    "chunk_size over the max": ({"json": {"content": TEXT, "chunk_size": 10_001}}, 400, "invalid_value", "chunk_size"),
    "chunk_size a string": ({"json": {"content": TEXT, "chunk_size": "10"}}, 400, "invalid_value", "chunk_size"),
    "overlap equal to size": (
        {"json": {"content": TEXT, "chunk_size": 10, "chunk_overlap": 10}}, 400, "invalid_value", "chunk_overlap"),
    "overlap over size": (
        {"json": {"content": TEXT, "chunk_size": 10, "chunk_overlap": 50}}, 400, "invalid_value", "chunk_overlap"),
    "negative overlap": ({"json": {"content": TEXT, "chunk_overlap": -1}}, 400, "invalid_value", "chunk_overlap"),
    "overlap over the default size": (
        {"json": {"content": TEXT, "chunk_overlap": 1000}}, 400, "invalid_value", "chunk_overlap"),
    "unknown chunk_method": ({"json": {"content": TEXT, "chunk_method": "letters"}}, 400, "invalid_value",
                             "chunk_method"),
    "unknown priority": ({"json": {"content": TEXT, "priority": "urgent"}}, 400, "invalid_value", "priority"),
    "unknown model": ({"json": {"content": TEXT, "embedding_model": "no-such-model"}}, 404, "model_not_found", None),
    "unknown model without embeddings": (
        {"json": {"content": TEXT, "embedding_model": "no-such-model", "generate_embeddings": False}}, 404,
        "model_not_found", None),
}


@pytest.mark.parametrize("case", list(BAD_ADDS), ids=list(BAD_ADDS))
def test_bad_add_is_a_clear_4xx_and_writes_nothing(caller: Caller, case: str) -> None:
    kwargs, status, code, param = BAD_ADDS[case]
    assert_openai_error(caller.post("/api/v1/media/add", **kwargs), status, code, param)
    assert_nothing_written(caller)
    assert caller.post("/api/v1/media/add", json={"content": "valid", "generate_embeddings": False}).status_code == 201


# --- the upload cap ------------------------------------------------------------------------------------------
def test_upload_over_the_configured_cap_is_413(caller: Caller) -> None:
    over = b"a" * (CAP + 1)
    response = caller.post("/api/v1/media/add", files={"file": ("big.txt", over)})
    assert_openai_error(response, 413, "request_too_large", "file")
    assert_openai_error(caller.post("/api/v1/media/add", json={"content": over.decode()}), 413,
                        "request_too_large", "content")
    assert_nothing_written(caller)
    at_cap = caller.post("/api/v1/media/add", files={"file": ("cap.txt", b"a" * CAP)},
                         data={"generate_embeddings": "false"})
    assert at_cap.status_code == 201, at_cap.text


@pytest.fixture
def default_cap_caller(tmp_path: Path, tiktoken_dir: Path) -> Iterator[Caller]:
    keys = write_keys_file(tmp_path, {u: key_of(u) for u in USERS[:1]})
    settings = make_settings(tmp_path / "data", tiktoken_dir, api_keys_file=keys,
                             single_user_api_key=None, chromadb_force_stub=True)
    with TestClient(create_app(settings)) as test_client:
        yield Caller(test_client, USERS[0])


def test_fifty_megabyte_upload_is_413_against_the_default_cap(default_cap_caller: Caller) -> None:
    response = default_cap_caller.post("/api/v1/media/add", files={"file": ("huge.txt", b"x" * (50 * 1024 * 1024))})
    assert_openai_error(response, 413, "request_too_large")
    assert_nothing_written(default_cap_caller)
    ok = default_cap_caller.post("/api/v1/media/add", json={"content": "still serving", "generate_embeddings": False})
    assert ok.status_code == 201, ok.text


# --- reads, paging, ids --------------------------------------------------------------------------------------
def test_list_media_pages_newest_first(caller: Caller) -> None:
    ids = [add_text(caller, f"document number {i}", title=f"doc {i}")["media_id"] for i in range(5)]
    seen: list[int] = []
    for offset in (0, 2, 4):
        page = caller.get("/api/v1/media", params={"limit": 2, "offset": offset}).json()
        assert page["total"] == 5 and (page["limit"], page["offset"]) == (2, offset)
        assert all("content" not in item or item["content"] is None for item in page["items"])
        seen += [item["id"] for item in page["items"]]
    assert seen == ids[::-1]
    assert caller.get("/api/v1/media", params={"offset": 5}).json()["items"] == []
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "ten"}):
        assert_openai_error(caller.get("/api/v1/media", params=params), 400, "invalid_value")
    assert caller.get("/api/v1/media").json()["total"] == 5


def test_unknown_and_malformed_media_ids(caller: Caller) -> None:
    known = add_text(caller, "a real document")["media_id"]
    for media_id in (known + 1, 0, -1, 2**63 - 1):
        assert_openai_error(caller.get(f"/api/v1/media/{media_id}"), 404, "not_found", "media_id")
        assert_openai_error(caller.delete(f"/api/v1/media/{media_id}"), 404, "not_found", "media_id")
    for media_id in ("abc", "1.5", str(2**70)):
        assert_openai_error(caller.get(f"/api/v1/media/{media_id}"), 400, "invalid_value")
        assert_openai_error(caller.delete(f"/api/v1/media/{media_id}"), 400, "invalid_value")
    assert caller.get(f"/api/v1/media/{known}").status_code == 200
    assert caller.get("/api/v1/media").json()["total"] == 1


# --- delete --------------------------------------------------------------------------------------------------
def test_soft_delete_keeps_vectors_until_purged(caller: Caller) -> None:
    kept = add_text(caller, WORDS, generate_embeddings=True, chunk_size=10, chunk_overlap=0)["media_id"]
    purged = add_text(caller, WORDS + " extra", generate_embeddings=True, chunk_size=10, chunk_overlap=0)["media_id"]
    wait_for_jobs(caller.client)
    assert vector_count(caller.client, caller.user_id, kept) == vector_count(caller.client, caller.user_id, purged) == 4

    response = caller.delete(f"/api/v1/media/{kept}")
    assert response.status_code == 200 and response.json() == {"media_id": kept, "deleted": True, "vectors_removed": 0}
    assert vector_count(caller.client, caller.user_id, kept) == 4     # the compactor's job, later
    response = caller.delete(f"/api/v1/media/{purged}", params={"purge_vectors": "true"})
    assert response.status_code == 200 and response.json()["vectors_removed"] == 4, response.text
    assert vector_count(caller.client, caller.user_id, purged) == 0

    for media_id in (kept, purged):
        assert_openai_error(caller.get(f"/api/v1/media/{media_id}"), 404, "not_found")
        assert_openai_error(caller.delete(f"/api/v1/media/{media_id}"), 404, "not_found")
    assert caller.get("/api/v1/media").json()["total"] == 0
    assert_openai_error(caller.delete(f"/api/v1/media/{kept}", params={"purge_vectors": "perhaps"}), 400)


# --- isolation -----------------------------------------------------------------------------------------------
def test_another_user_gets_404_for_my_media(new_caller: Callable[[], Caller]) -> None:
    alice, bob = new_caller(), new_caller()
    media_id = add_text(alice, WORDS, title="Alice's notes", generate_embeddings=True, chunk_size=10,
                        chunk_overlap=0)["media_id"]
    wait_for_jobs(alice.client)
    assert_openai_error(bob.get(f"/api/v1/media/{media_id}"), 404, "not_found")
    assert_openai_error(bob.delete(f"/api/v1/media/{media_id}"), 404, "not_found")
    assert_openai_error(bob.delete(f"/api/v1/media/{media_id}", params={"purge_vectors": "true"}), 404, "not_found")
    assert bob.get("/api/v1/media").json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
    # Alice's media and vectors are untouched by Bob's attempts.
    assert alice.get(f"/api/v1/media/{media_id}").json()["title"] == "Alice's notes"
    assert vector_count(alice.client, alice.user_id, media_id) == 4
    # Bob's own media gets ids of its own; they never reach Alice's.
    own = add_text(bob, "Bob's text")["media_id"]
    assert bob.get(f"/api/v1/media/{own}").json()["content"] == "Bob's text"
    assert alice.get("/api/v1/media").json()["total"] == 1


def test_requests_without_a_valid_key_are_401(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-key"}):
        response = client.post("/api/v1/media/add", json={"content": "x"}, headers=headers)
        assert response.status_code == 401 and set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert client.get("/api/v1/media/1", headers=headers).status_code == 401
