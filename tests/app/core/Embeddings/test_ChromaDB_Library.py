"""ChromaDB_Library: user id validation, confined per-user paths (traversal and symlink escapes
refused), one cached client per user (thread-safe, telemetry off), the in-memory stub, and the
collection helpers (cosine space, no default embedding function, fixed dimension)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tldw_Server_API.app.core.Embeddings.ChromaDB_Library import (
    ChromaClientManager,
    InMemoryChromaClient,
    get_collection_or_none,
    get_or_create_cosine_collection,
    media_chunk_id,
    media_collection_name,
    user_chroma_path,
    validate_user_id,
)
from tldw_Server_API.app.core.errors import InvalidInput


@pytest.mark.parametrize("good", ["alice", "A_b-1", "x" * 64, "0"])
def test_valid_user_ids(good: str) -> None:
    assert validate_user_id(good) == good


def test_integer_user_ids_become_strings() -> None:
    assert validate_user_id(7) == "7"


@pytest.mark.parametrize("bad", ["", "x" * 65, "../x", "a/b", "/etc", ".", "..", "a.b", "a b", "é", "a\x00b",
                                 None, -1, True, 1.5])
def test_invalid_user_ids(bad: object, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        validate_user_id(bad)
    with pytest.raises(InvalidInput):
        user_chroma_path(tmp_path, bad)


def test_user_path_is_inside_the_base(tmp_path: Path) -> None:
    assert user_chroma_path(tmp_path, "alice") == tmp_path.resolve() / "users" / "alice" / "chroma"


def test_symlink_escapes_are_refused(tmp_path: Path) -> None:
    base, outside = tmp_path / "data", tmp_path / "outside"
    (base / "users" / "bob").mkdir(parents=True)
    outside.mkdir()
    (base / "users" / "evil").symlink_to(outside, target_is_directory=True)
    (base / "users" / "bob" / "chroma").symlink_to(outside, target_is_directory=True)
    (base / "users" / "mallory").symlink_to(base / "users" / "bob", target_is_directory=True)  # another user's
    for user in ("evil", "bob", "mallory"):
        with pytest.raises(InvalidInput):
            user_chroma_path(base, user)
    with pytest.raises(InvalidInput):
        ChromaClientManager(base).client("evil")
    assert list(outside.iterdir()) == []  # nothing was written through a link


def test_a_symlinked_users_dir_pointing_outside_is_refused(tmp_path: Path) -> None:
    base, outside = tmp_path / "data", tmp_path / "elsewhere"
    base.mkdir()
    outside.mkdir()
    (base / "users").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidInput, match="escapes"):
        user_chroma_path(base, "alice")


def test_one_cached_client_per_user_with_telemetry_off(tmp_path: Path) -> None:
    manager = ChromaClientManager(tmp_path)
    try:
        results: list[object] = []
        barrier = threading.Barrier(6)

        def open_client() -> None:
            barrier.wait()
            results.append(manager.client("alice"))

        threads = [threading.Thread(target=open_client) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        alice = results[0]
        assert all(client is alice for client in results)
        assert manager.client("alice") is alice
        bob = manager.client("bob")
        assert bob is not alice
        settings = alice.get_settings()
        assert settings.anonymized_telemetry is False and settings.allow_reset is False
        assert (tmp_path / "users" / "alice" / "chroma").is_dir() and (tmp_path / "users" / "bob" / "chroma").is_dir()
    finally:
        manager.close_all()
    reopened = ChromaClientManager(tmp_path)
    try:
        assert reopened.client("alice") is not alice
    finally:
        reopened.close_all()


def test_collection_helpers_on_real_chroma(tmp_path: Path) -> None:
    manager = ChromaClientManager(tmp_path)
    try:
        client = manager.client("carol")
        name = media_collection_name("carol")
        assert name == "user_carol_media_embeddings"
        assert get_collection_or_none(client, name) is None
        collection = get_or_create_cosine_collection(client, name, 4)
        assert collection.configuration["hnsw"]["space"] == "cosine"
        assert collection.configuration.get("embedding_function") is None  # never Chroma's downloading default
        assert get_or_create_cosine_collection(client, name, 4).id == collection.id
        with pytest.raises(InvalidInput, match="dimension 4"):
            get_or_create_cosine_collection(client, name, 5)
        client.delete_collection(name)
    finally:
        manager.close_all()


def test_stub_is_in_memory_and_per_user(tmp_path: Path) -> None:
    manager = ChromaClientManager(tmp_path, force_stub=True)
    alice, bob = manager.client("alice"), manager.client("bob")
    assert isinstance(alice, InMemoryChromaClient) and manager.client("alice") is alice
    get_or_create_cosine_collection(alice, "docs", 2).upsert(ids=["a"], embeddings=[[1.0, 0.0]])
    assert get_collection_or_none(bob, "docs") is None
    assert get_collection_or_none(alice, "docs").count() == 1
    with pytest.raises(InvalidInput, match="invalid metadata filter"):
        get_collection_or_none(alice, "docs").get(where={"x": {"$gt": "a"}})
    assert list(tmp_path.iterdir()) == []  # no files
    manager.close_all()
    assert get_collection_or_none(manager.client("alice"), "docs") is None


def test_names() -> None:
    assert media_chunk_id(3, 0) == "media_3_chunk_0"
    assert media_collection_name(12) == "user_12_media_embeddings"
    with pytest.raises(InvalidInput):
        media_collection_name("../x")
