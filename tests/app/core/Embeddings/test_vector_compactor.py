"""The vector compactor on real stores (Chroma on disk, a Chroma server, pgvector in a fresh
database): only soft-deleted media lose their vectors, from every model's media collection, and a
second run removes nothing; plus the pure parts (slicing, collection choice, user discovery) and
the background loop that outlives a failing run. Each test uses fresh user ids and cleans up."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger
from support import MODEL, make_settings

from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDB, MediaDBFactory
from tldw_Server_API.app.core.Embeddings.ChromaDB_Library import media_chunk_id
from tldw_Server_API.app.core.Embeddings.services.vector_compactor import (
    DELETE_SLICE,
    CompactionFailed,
    CompactionReport,
    VectorCompactor,
    id_slices,
)
from tldw_Server_API.app.core.Embeddings.stage_context import media_collection, media_collections
from tldw_Server_API.app.core.errors import InvalidInput
from tldw_Server_API.app.core.RAG.vector_stores.base import VectorStore
from tldw_Server_API.app.core.RAG.vector_stores.factory import VectorStoreFactory, create_vector_store_factory

SYSTEMS = ["chroma", "chroma-server", "pgvector"]
OTHER_MODEL = "other-model"


class System:
    """The app's two factories over one data dir, and the users a test made (dropped afterwards)."""

    def __init__(self, data_dir: Path, vector_stores: VectorStoreFactory) -> None:
        self.data_dir = data_dir
        self.media_dbs = MediaDBFactory(data_dir)
        self.vector_stores = vector_stores
        self.users: list[str] = []

    def user(self, prefix: str) -> str:
        user_id = f"{prefix}{uuid.uuid4().hex[:12]}"
        self.users.append(user_id)
        return user_id

    def compactor(self) -> VectorCompactor:
        return VectorCompactor(self.media_dbs, self.vector_stores)

    def cleanup(self) -> None:
        for user_id in self.users:
            store = self.vector_stores.for_user(user_id)
            for name in store.list_collections():
                store.delete_collection(name)
        self.vector_stores.close()
        self.media_dbs.close_all()


def _vector_stores(kind: str, data_dir: Path, request: pytest.FixtureRequest | None = None) -> VectorStoreFactory:
    """The factory as the app builds it from settings; `request` gives the service fixtures."""
    rag: dict[str, object] = {}
    if kind == "pgvector" and request is not None:
        rag = {"vector_store_type": "pgvector",
               "pgvector": {"dsn": request.getfixturevalue("pg_database"), "ef_search": 100}}
    elif kind == "chroma-server" and request is not None:
        rag = {"chroma": {"url": request.getfixturevalue("chroma_server_url")}}
    settings = make_settings(data_dir, **({"rag": rag} if rag else {}))
    return create_vector_store_factory(settings.storage_config())


@pytest.fixture(params=SYSTEMS)
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[System]:
    sys_ = System(tmp_path, _vector_stores(request.param, tmp_path, request))
    assert sys_.vector_stores.kind == request.param
    try:
        yield sys_
    finally:
        sys_.cleanup()


def put(store: VectorStore, name: str, dimension: int, media_id: int, chunks: int) -> None:
    """`chunks` vectors of one media, with the metadata the storage stage writes."""
    store.ensure_collection(name, dimension)
    vectors = np.random.default_rng(media_id).random((chunks, dimension)) + 0.1
    metadatas = [{"media_id": media_id, "chunk_index": i} for i in range(chunks)]
    store.upsert(name, [media_chunk_id(media_id, i) for i in range(chunks)], vectors,
                 [f"chunk {i}" for i in range(chunks)], metadatas)


def add(db: MediaDB, title: str, deleted: bool = False) -> int:
    media_id = db.add_media(title, f"the text of {title}", "text").id
    if deleted:
        db.soft_delete(media_id)
    return media_id


def total(store: VectorStore) -> int:
    return sum(store.count(name) for name in store.list_collections())


def test_removes_the_deleted_medias_vectors_from_every_model_collection_and_nothing_else(system: System) -> None:
    a, b = system.user("a"), system.user("b")
    db_a, db_b = system.media_dbs.get(a), system.media_dbs.get(b)
    live, gone = add(db_a, "live"), add(db_a, "gone", deleted=True)
    add(db_b, "first")
    b_live = add(db_b, "second")
    assert b_live == gone   # user B's live media has the id of A's deleted one
    default, other = media_collection(a, MODEL, MODEL), media_collection(a, OTHER_MODEL, MODEL)
    assert default != other
    store_a, store_b = system.vector_stores.for_user(a), system.vector_stores.for_user(b)
    put(store_a, default, 3, live, 2)
    put(store_a, default, 3, gone, 3)
    put(store_a, other, 5, live, 2)
    put(store_a, other, 5, gone, 2)
    put(store_a, "vs_test_store", 3, gone, 1)   # a vector-store API collection: never the compactor's
    b_collection = media_collection(b, MODEL, MODEL)
    put(store_b, b_collection, 3, b_live, 4)
    # Not users: a name that is no user id (with a media DB), a user folder without one.
    MediaDB(system.data_dir / "users" / "not.a.user" / "media.db").close()
    (system.data_dir / "users" / "nomedia").mkdir()
    before = total(store_a)

    report = system.compactor().run_once()

    assert report == CompactionReport(removed_vectors=5, users=2, media=1, collections=2)
    assert before - total(store_a) == report.removed_vectors
    assert report.to_dict() == {"object": "embedding.compaction", "removed_vectors": 5, "users": 2, "media": 1,
                                "collections": 2}
    for name in (default, other):
        assert store_a.count(name, {"media_id": gone}) == 0
        assert store_a.count(name, {"media_id": live}) == 2
    assert store_a.count("vs_test_store", {"media_id": gone}) == 1
    assert store_b.count(b_collection, {"media_id": b_live}) == 4
    assert system.compactor().run_once() == CompactionReport(removed_vectors=0, users=2, media=1, collections=2)
    assert total(store_a) == 5 and total(store_b) == 4


def test_more_deleted_media_than_one_filter_holds_are_removed_in_slices(system: System) -> None:
    """Over 1000 ids is more than one `$in` list may hold: every slice must be deleted."""
    user = system.user("s")
    db = system.media_dbs.get(user)
    ids = [add(db, f"m{i}", deleted=True) for i in range(2 * DELETE_SLICE + 1)]
    kept = add(db, "kept")
    store = system.vector_stores.for_user(user)
    name = media_collection(user, MODEL, MODEL)
    for media_id in (ids[0], ids[DELETE_SLICE], ids[-1], kept):
        put(store, name, 3, media_id, 2)

    report = system.compactor().run_once()

    assert (report.removed_vectors, report.media) == (6, len(ids))
    assert store.count(name) == store.count(name, {"media_id": kept}) == 2


def test_the_loop_outlives_a_failing_run_and_other_users_are_still_compacted(tmp_path: Path) -> None:
    system = System(tmp_path, _vector_stores("chroma", tmp_path))
    bad, good, idle = "a-bad", "b-good", "c-idle"
    (tmp_path / "users" / bad).mkdir(parents=True)
    (tmp_path / "users" / bad / "media.db").write_bytes(b"not an sqlite database" * 100)
    db = system.media_dbs.get(good)
    gone = add(db, "gone", deleted=True)
    add(system.media_dbs.get(idle), "live")
    store = system.vector_stores.for_user(good)
    name = media_collection(good, MODEL, MODEL)
    put(store, name, 3, gone, 3)
    with pytest.raises(CompactionFailed, match=bad):
        system.compactor().run_once()
    assert store.count(name) == 0   # the failing user did not stop the others

    async def main() -> list[str]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        failures: list[str] = []

        def sink(message: object) -> None:
            if "next run in" in str(message):
                failures.append(str(message))
                if len(failures) == 2:
                    loop.call_soon_threadsafe(stop.set)

        sink_id = logger.add(sink, level="ERROR", format="{message}")
        try:
            await asyncio.wait_for(system.compactor().run_forever(0.01, stop), timeout=60)
        finally:
            logger.remove(sink_id)
        return failures

    try:
        failures = asyncio.run(main())
        assert len(failures) == 2 and bad in failures[0]
        assert not (tmp_path / "users" / idle / "chroma").exists()   # no deleted media: its store is not opened
    finally:
        system.cleanup()


def test_run_forever_refuses_a_non_positive_interval(tmp_path: Path) -> None:
    compactor = VectorCompactor(MediaDBFactory(tmp_path), _vector_stores("chroma", tmp_path))
    with pytest.raises(InvalidInput):
        asyncio.run(compactor.run_forever(0, asyncio.Event()))


# --- pure parts ----------------------------------------------------------------------------------

@given(st.lists(st.integers(min_value=1, max_value=10**9)), st.integers(min_value=1, max_value=600))
def test_id_slices_keep_every_id_once_in_order_within_the_size(ids: list[int], size: int) -> None:
    slices = id_slices(ids, size)
    assert [i for part in slices for i in part] == ids
    assert all(1 <= len(part) <= size for part in slices)
    assert len(slices) == -(-len(ids) // size)


def test_id_slices_refuse_an_empty_size() -> None:
    with pytest.raises(InvalidInput):
        id_slices([1, 2], 0)


def test_media_collections_are_every_models_collection_of_the_user_only() -> None:
    default, other = media_collection("u1", MODEL, MODEL), media_collection("u1", OTHER_MODEL, MODEL)
    names = ["vs_0123", other, media_collection("u2", MODEL, MODEL), default, "notes"]
    assert media_collections("u1", names) == sorted([default, other])


def test_users_are_folders_with_a_media_db_and_a_valid_id(tmp_path: Path) -> None:
    assert MediaDBFactory(tmp_path).user_ids() == []
    for name in ("u2", "u1", "bad.name", "bad name"):
        (tmp_path / "users" / name).mkdir(parents=True)
        (tmp_path / "users" / name / "media.db").write_bytes(b"")
    (tmp_path / "users" / "u3").mkdir()                      # no media DB
    (tmp_path / "users" / "u4" / "media.db").mkdir(parents=True)   # not a file
    (tmp_path / "users" / "u5").write_bytes(b"")             # a file, not a folder
    assert MediaDBFactory(tmp_path).user_ids() == ["u1", "u2"]
