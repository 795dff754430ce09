"""Vector store metadata: create/get/update/delete, per-user isolation, name conflicts, metadata
rules, and OpenAI cursor paging (property-tested: walking pages forwards with `after` or backwards
with `before` yields every store exactly once, in order). SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import SteppingClock

from tldw_Server_API.app.core.Embeddings.vector_store_meta_db import (
    VectorStoreMetaDB,
    VectorStoreRecord,
    validate_metadata,
)
from tldw_Server_API.app.core.errors import Conflict, InvalidInput, NotFound


def create(db: VectorStoreMetaDB, user: str, name: str | None, **extra: object) -> VectorStoreRecord:
    return db.create(user, name=name, embedding_model="m", embedding_provider="huggingface", **extra)  # type: ignore[arg-type]


def test_create_get_update_delete(jobs_db_url: str) -> None:
    clock = SteppingClock()
    db = VectorStoreMetaDB(jobs_db_url, clock=clock)
    store = create(db, "alice", "docs", dimensions=384, metadata={"team": "search"})
    assert store.id.startswith("vs_") and store.created_at == clock.now
    assert (store.name, store.metadata, store.dimensions) == ("docs", {"team": "search"}, 384)
    assert store.status == "completed"
    assert db.get("alice", store.id) == store == db.get_by_name("alice", "docs")
    clock.now += timedelta(seconds=5)
    updated = db.update("alice", store.id, name="papers", metadata={"team": "rag"}, vector_count=3, usage_bytes=4608)
    assert (updated.name, updated.metadata) == ("papers", {"team": "rag"})
    assert (updated.vector_count, updated.usage_bytes) == (3, 4608)
    assert (updated.created_at, updated.updated_at) == (store.created_at, clock.now)
    assert db.update("alice", store.id, dimensions=768).name == "papers"  # None leaves fields alone
    db.delete("alice", store.id)
    with pytest.raises(NotFound):
        db.get("alice", store.id)
    with pytest.raises(NotFound):
        db.delete("alice", store.id)


def test_other_users_never_see_a_store(jobs_db_url: str) -> None:
    db = VectorStoreMetaDB(jobs_db_url)
    store = create(db, "alice", "docs")
    for call in (lambda: db.get("bob", store.id), lambda: db.update("bob", store.id, name="x"),
                 lambda: db.delete("bob", store.id), lambda: db.get_by_name("bob", "docs")):
        with pytest.raises(NotFound):
            call()
    assert db.list_stores("bob") == ([], False)
    assert db.get("alice", store.id).name == "docs"


def test_names_are_unique_per_user(jobs_db_url: str) -> None:
    db = VectorStoreMetaDB(jobs_db_url)
    first = create(db, "alice", "docs")
    with pytest.raises(Conflict):
        create(db, "alice", "docs")
    assert create(db, "bob", "docs").name == "docs"
    second = create(db, "alice", "notes")
    with pytest.raises(Conflict):
        db.update("alice", second.id, name="docs")
    assert db.get("alice", second.id).name == "notes"
    create(db, "alice", None)
    create(db, "alice", None)  # unnamed stores never clash
    assert db.update("alice", first.id, name="docs").name == "docs"


@pytest.mark.parametrize("metadata", [
    {f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}, {"k": 3}, {"": "v"}, ["k"],
])
def test_metadata_follows_openai_rules(metadata: object) -> None:
    with pytest.raises(InvalidInput):
        validate_metadata(metadata)  # type: ignore[arg-type]
    assert validate_metadata({f"k{i}": "v" * 512 for i in range(16)})


def test_bad_metadata_is_refused_on_create_and_update(jobs_db_url: str) -> None:
    db = VectorStoreMetaDB(jobs_db_url)
    with pytest.raises(InvalidInput):
        create(db, "alice", "docs", metadata={"k": 3})
    store = create(db, "alice", "docs")
    with pytest.raises(InvalidInput):
        db.update("alice", store.id, metadata={"k" * 65: "v"})
    assert db.get("alice", store.id).metadata == {}


def test_paging_arguments_are_checked(jobs_db_url: str) -> None:
    db = VectorStoreMetaDB(jobs_db_url)
    other = create(db, "bob", "theirs")
    for kwargs in ({"limit": 0}, {"limit": 101}, {"order": "up"}, {"after": "vs_missing"}, {"before": other.id}):
        with pytest.raises(InvalidInput):
            db.list_stores("alice", **kwargs)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    offsets=st.lists(st.integers(0, 3), max_size=12),
    limit=st.integers(1, 5),
    order=st.sampled_from(["asc", "desc"]),
)
def test_walking_pages_yields_every_store_once_in_order(
    jobs_db_url: str, offsets: list[int], limit: int, order: str
) -> None:
    clock = SteppingClock()
    db = VectorStoreMetaDB(jobs_db_url, clock=clock)
    user = f"user-{uuid.uuid4().hex[:8]}"
    base = clock.now
    for offset in offsets:  # few distinct timestamps: ties are decided by id
        clock.now = base + timedelta(seconds=offset)
        create(db, user, None)
    create(db, "someone-else", None)
    everything, _ = db.list_stores(user, limit=100, order="asc")
    expected = sorted(everything, key=lambda s: (s.created_at, s.id), reverse=order == "desc")
    assert [s.id for s in everything] == [s.id for s in sorted(everything, key=lambda s: (s.created_at, s.id))]
    assert len(expected) == len(offsets)

    forward: list[str] = []
    after = None
    while True:
        page, has_more = db.list_stores(user, limit=limit, order=order, after=after)  # type: ignore[arg-type]
        assert len(page) <= limit
        forward += [s.id for s in page]
        if not has_more:
            break
        assert len(page) == limit
        after = page[-1].id
    assert forward == [s.id for s in expected]

    if not expected:
        return
    backward = [expected[-1].id]
    before = expected[-1].id
    while True:
        page, has_more = db.list_stores(user, limit=limit, order=order, before=before)  # type: ignore[arg-type]
        backward = [s.id for s in page] + backward
        if not has_more:
            break
        before = page[0].id
    assert backward == [s.id for s in expected]

    first, last = 0, len(expected) - 1
    between, has_more = db.list_stores(user, limit=100, order=order, after=expected[first].id,  # type: ignore[arg-type]
                                       before=expected[last].id)
    assert [s.id for s in between] == [s.id for s in expected[first + 1 : last]] and not has_more
