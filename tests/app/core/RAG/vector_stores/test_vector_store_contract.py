"""The `VectorStore` contract, one set of test bodies run against every adapter (chroma's `system`
fixture style): the in-memory stub, Chroma on disk, a Chroma server (`chroma run`), pgvector as
the config builds it (exact scans below the index threshold) and pgvector with its HNSW index
from the first row. Each test uses
fresh user ids and drops every collection it made."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import make_settings

from tldw_Server_API.app.core.errors import InvalidInput, NotFound
from tldw_Server_API.app.core.RAG.vector_stores.base import VectorStore
from tldw_Server_API.app.core.RAG.vector_stores.factory import (
    PgVectorStoreFactory,
    VectorStoreFactory,
    create_vector_store_factory,
)
from tldw_Server_API.app.core.RAG.vector_stores.filters import matches, parse_where

SYSTEMS = ["chroma-stub", "chroma", "chroma-server", "pgvector", "pgvector-hnsw"]


class System:
    """A factory plus the users a test touched, so teardown can drop their collections."""

    def __init__(self, factory: VectorStoreFactory) -> None:
        self.factory = factory
        self.users: list[str] = []

    def store(self) -> VectorStore:
        user = f"u{uuid.uuid4().hex[:12]}"
        self.users.append(user)
        store = self.factory.for_user(user)
        assert isinstance(store, VectorStore)
        return store

    def cleanup(self) -> None:
        for user in self.users:
            store = self.factory.for_user(user)
            for name in store.list_collections():
                store.delete_collection(name)
        self.factory.close()


def _factory(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> VectorStoreFactory:
    if kind.startswith("pgvector"):
        dsn = request.getfixturevalue("pgvector_dsn")
        if kind == "pgvector-hnsw":
            return PgVectorStoreFactory(dsn, 100, index_min_rows=0)
        rag = {"vector_store_type": "pgvector", "pgvector": {"dsn": dsn, "ef_search": 100}}
        return create_vector_store_factory(make_settings(tmp_path, rag=rag).storage_config())
    if kind == "chroma-server":
        rag = {"chroma": {"url": request.getfixturevalue("chroma_server_url")}}
        return create_vector_store_factory(make_settings(tmp_path, rag=rag).storage_config())
    settings = make_settings(tmp_path, chromadb_force_stub=kind == "chroma-stub")
    return create_vector_store_factory(settings.storage_config())


@pytest.fixture(params=SYSTEMS)
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[System]:
    sys_ = System(_factory(request.param, tmp_path, request))
    assert sys_.factory.kind == request.param.removesuffix("-hnsw")
    try:
        yield sys_
    finally:
        sys_.cleanup()


def unit(*values: float) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    return list(v / np.linalg.norm(v))


def test_upsert_overwrites_and_query_ranks_by_cosine(system: System) -> None:
    store = system.store()
    store.ensure_collection("docs", 3)
    store.ensure_collection("docs", 3)  # idempotent
    assert store.query("docs", [1, 0, 0], 5) == []  # empty collection
    assert store.query("never-made", [1, 0, 0], 5) == []
    vectors = [[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0.2, 0.1]]
    store.upsert("docs", ["a", "b", "c", "d"], vectors, ["A", "B", "C", "D"],
                 [{"media_id": 1, "stale": "x"}, {"media_id": 2}, None, {"media_id": 1, "title": None}])
    store.upsert("docs", ["a"], [[1, 0, 0.05]], ["A2"], [{"media_id": 1, "chunk_index": 0}])
    assert store.count("docs") == 4
    (a,) = store.get("docs", ids=["a"])
    assert (a.document, a.metadata) == ("A2", {"media_id": 1, "chunk_index": 0})  # replaced, not merged
    assert store.get("docs", ids=["c", "d"])[1].metadata == {"media_id": 1}  # None values are dropped
    query = np.asarray([1.0, 0.1, 0.0])
    hits = store.query("docs", query, 3)
    stored = np.asarray([[1, 0, 0.05], [0, 1, 0], [1, 1, 0], [1, 0.2, 0.1]])
    cosine = stored @ query / (np.linalg.norm(stored, axis=1) * np.linalg.norm(query))
    expected = [["a", "b", "c", "d"][i] for i in np.argsort(-cosine)[:3]]
    assert [h.id for h in hits] == expected
    assert [h.score for h in hits] == pytest.approx(sorted(cosine, reverse=True)[:3], abs=1e-5)
    assert hits[0].document == "A2" and hits[0].metadata == {"media_id": 1, "chunk_index": 0}
    assert [h.id for h in store.query("docs", query, 10)] == [["a", "b", "c", "d"][i] for i in np.argsort(-cosine)]


RECORDS: list[tuple[str, dict[str, Any]]] = [
    ("r0", {"media_id": 1, "kind": "pdf", "score": 0.5, "flag": True}),
    ("r1", {"media_id": 1, "kind": "txt", "score": 2, "flag": False}),
    ("r2", {"media_id": 2, "kind": "pdf", "score": 7.5}),
    ("r3", {"media_id": 3, "kind": "html", "flag": True}),
    ("r4", {"media_id": "3", "kind": "pdf", "score": 10}),
    ("r5", {}),
]
FILTERS: list[tuple[dict[str, Any], list[str]]] = [
    ({"media_id": 1}, ["r0", "r1"]),
    ({"media_id": 1.0}, ["r0", "r1"]),
    ({"media_id": "3"}, ["r4"]),
    ({"media_id": {"$eq": 3}}, ["r3"]),
    ({"media_id": {"$ne": 1}}, ["r2", "r3", "r4", "r5"]),
    ({"flag": True}, ["r0", "r3"]),
    ({"flag": 1}, []),
    ({"media_id": {"$in": [2, 3]}}, ["r2", "r3"]),
    ({"media_id": {"$in": [1, 2.0]}}, ["r0", "r1", "r2"]),
    ({"kind": {"$nin": ["pdf", "txt"]}}, ["r3", "r5"]),
    ({"$and": [{"kind": "pdf"}, {"score": {"$gte": 7.5}}]}, ["r2", "r4"]),
    ({"kind": "pdf", "media_id": 1}, ["r0"]),
    ({"$or": [{"media_id": 3}, {"kind": "txt"}]}, ["r1", "r3"]),
    ({"score": {"$gt": 2}}, ["r2", "r4"]),
    ({"score": {"$lt": 2}}, ["r0"]),
    ({"score": {"$lte": 2}}, ["r0", "r1"]),
    ({"$and": [{"score": {"$gt": 0}}, {"score": {"$lt": 8}}]}, ["r0", "r1", "r2"]),
    ({"$and": [{"media_id": 1}]}, ["r0", "r1"]),
]


def test_where_filters_agree_with_the_reference_semantics(system: System) -> None:
    store = system.store()
    store.ensure_collection("filters", 2)
    ids = [r[0] for r in RECORDS]
    vectors = [[1.0, i / 10] for i in range(len(ids))]
    store.upsert("filters", ids, vectors, ids, [r[1] for r in RECORDS])
    for where, expected in FILTERS:
        assert [r for r, meta in RECORDS if matches(parse_where(where), meta)] == expected, where
        assert [r.id for r in store.get("filters", where=where)] == expected, where
        assert store.count("filters", where=where) == len(expected), where
        hits = store.query("filters", [1.0, 0.0], 10, where=where)
        assert sorted(h.id for h in hits) == expected, where
    bad_filters: list[dict[str, Any]] = [
        {"kind": {"$gt": "a"}}, {"kind": {"$like": "a"}}, {"media_id": {"$in": []}},
        {"media_id": {"$in": [1, "1"]}}, {"$not": {"a": 1}}, {"bad key": 1}, {"m": [1]}]
    for bad in bad_filters:
        with pytest.raises(InvalidInput):
            store.get("filters", where=bad)
        with pytest.raises(InvalidInput):
            store.query("filters", [1.0, 0.0], 3, where=bad)


def test_get_by_ids_and_pages(system: System) -> None:
    store = system.store()
    store.ensure_collection("paged", 2)
    ids = [f"media_7_chunk_{i}" for i in range(7)]
    vectors = [[1.0, float(i)] for i in range(7)]
    store.upsert("paged", ids, vectors, [f"t{i}" for i in range(7)], [{"media_id": 7, "chunk_index": i}
                                                                     for i in range(7)])
    store.upsert("paged", [ids[3]], [[1.0, 3.0]], ["t3 again"], [{"media_id": 7, "chunk_index": 3}])
    assert [r.id for r in store.get("paged")] == ids  # insertion order; an upsert keeps the place
    got = store.get("paged", ids=[ids[5], "missing", ids[1]])
    assert [r.id for r in got] == [ids[5], ids[1]] and got[0].vector is None
    assert [r.id for r in store.get("paged", ids=[ids[2], ids[0], ids[2]], limit=1, offset=1)] == [ids[0]]
    pages = [store.get("paged", limit=3, offset=o) for o in (0, 3, 6, 9)]
    assert [[r.id for r in p] for p in pages] == [ids[:3], ids[3:6], ids[6:], []]
    filtered = store.get("paged", where={"chunk_index": {"$gte": 2}}, limit=2, offset=1)
    assert [r.id for r in filtered] == ids[3:5]
    assert store.get("paged", limit=0) == [] and store.get("paged", ids=[]) == []
    (rec,) = store.get("paged", ids=[ids[2]], include_vectors=True)
    assert rec.vector == pytest.approx([1.0, 2.0]) and rec.metadata == {"media_id": 7, "chunk_index": 2}
    assert store.get("never-made") == [] and store.count("never-made") == 0
    with pytest.raises(InvalidInput):
        store.get("paged", limit=-1)


def test_delete_and_delete_where(system: System) -> None:
    store = system.store()
    store.ensure_collection("del", 2)
    ids = [f"x{i}" for i in range(6)]
    store.upsert("del", ids, [[1.0, i] for i in range(6)], None, [{"media_id": i % 3} for i in range(6)])
    assert store.delete("del", ["x0", "nope", "x0"]) == 1
    assert store.delete("del", ["x0"]) == 0
    assert store.delete_where("del", {"media_id": 1}) == 2  # x1, x4
    assert [r.id for r in store.get("del")] == ["x2", "x3", "x5"]
    assert store.get("del", ids=["x2"])[0].document == ""
    with pytest.raises(InvalidInput):
        store.delete_where("del", {})
    assert store.delete("never-made", ["x"]) == 0 and store.delete_where("never-made", {"a": 1}) == 0
    assert store.count("del") == 3


def test_dimension_and_input_errors(system: System) -> None:
    store = system.store()
    store.ensure_collection("dims", 3)
    with pytest.raises(InvalidInput) as info:
        store.ensure_collection("dims", 4)
    assert info.value.code == "dimension_mismatch"
    with pytest.raises(InvalidInput):
        store.upsert("dims", ["a"], [[1, 0, 0, 0]])
    with pytest.raises(InvalidInput):
        store.query("dims", [1, 0], 3)
    with pytest.raises(NotFound):
        store.upsert("never-made", ["a"], [[1, 0, 0]])
    bad_calls: list[tuple[Any, ...]] = [
        (["a", "a"], [[1, 0, 0], [0, 1, 0]]),    # duplicate ids in one batch
        (["a"], [[0, 0, 0]]),                      # zero vector: no cosine
        (["a"], [[1, 0, float("nan")]]),           # not finite
        (["a", "b"], [[1, 0, 0]]),                 # one vector short
        ([""], [[1, 0, 0]]),                       # empty id
    ]
    for ids, vectors in bad_calls:
        with pytest.raises(InvalidInput):
            store.upsert("dims", ids, vectors)
    with pytest.raises(InvalidInput):
        store.upsert("dims", ["a"], [[1, 0, 0]], metadatas=[{"nested": {"x": 1}}])
    with pytest.raises(InvalidInput):
        store.query("dims", [1, 0, 0], 0)
    for bad_name in ("a", "../etc", "has space", "x" * 200):
        with pytest.raises(InvalidInput):
            store.ensure_collection(bad_name, 3)
    assert store.count("dims") == 0  # nothing was half-written


def test_users_are_isolated(system: System) -> None:
    alice, bob = system.store(), system.store()
    alice.ensure_collection("shared-name", 2)
    alice.ensure_collection("other", 2)
    alice.upsert("shared-name", ["a"], [[1.0, 0.0]], ["alice's"], [{"media_id": 1}])
    assert alice.list_collections() == ["other", "shared-name"]
    assert bob.list_collections() == []
    assert bob.query("shared-name", [1.0, 0.0], 5) == [] and bob.get("shared-name") == []
    assert bob.count("shared-name") == 0 and bob.delete("shared-name", ["a"]) == 0
    bob.ensure_collection("shared-name", 3)  # same name, another dimension: a different collection
    bob.upsert("shared-name", ["a"], [[0.0, 0.0, 1.0]], ["bob's"])
    assert [h.document for h in alice.query("shared-name", [1.0, 0.0], 5)] == ["alice's"]
    assert bob.delete_collection("shared-name") is True
    assert bob.delete_collection("shared-name") is False
    assert alice.count("shared-name") == 1
    assert alice.delete_collection("other") is True and alice.list_collections() == ["shared-name"]


def test_large_batches(system: System) -> None:
    store = system.store()
    store.ensure_collection("bulk", 16)
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((600, 16)).astype(np.float32)
    ids = [f"media_1_chunk_{i}" for i in range(600)]
    store.upsert("bulk", ids, vectors, [f"c{i}" for i in range(600)], [{"chunk_index": i} for i in range(600)])
    store.upsert("bulk", ids[:300], vectors[:300], None, [{"chunk_index": i, "v": 2} for i in range(300)])
    assert store.count("bulk") == 600 and store.count("bulk", where={"v": 2}) == 300
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for q in rng.standard_normal((5, 16)):
        exact = np.argsort(-(normed @ (q / np.linalg.norm(q))))[:10]
        hits = store.query("bulk", q, 10)
        assert len({h.id for h in hits} & {ids[i] for i in exact}) >= 9  # HNSW may miss one
