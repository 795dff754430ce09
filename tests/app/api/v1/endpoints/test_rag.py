"""HTTP tests of `POST /api/v1/rag/search` on the real app (TestClient, lifespan run, bundled model,
in-memory vector store): the result fields and their offsets in every mode, `top_k` bounds, bad
inputs (a clear 400 in OpenAI's error shape), `media_ids` and metadata filters, soft-deleted media
in no mode, and results scoped to the caller. Whole-flow ranking per mode lives in
tests/e2e/test_upload_search.py; this module does not repeat it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import Caller, assert_openai_error, key_of, make_settings, wait_for_jobs, write_keys_file

from tldw_Server_API.app.main import create_app

USERS = [f"rag-user-{i:02d}" for i in range(20)]
MODES = ("vector", "fts", "hybrid")
FIELDS = {"media_id", "title", "chunk_index", "text", "start_char", "end_char", "score", "page"}
SEARCH = "/api/v1/rag/search"
CORPUS = {
    "Volcanoes": (
        "A volcano is a rupture in the crust of a planet where hot lava, volcanic ash and gases escape from a "
        "magma chamber below the surface. Eruptions of basaltic lava flow slowly, while explosive eruptions throw "
        "pyroclastic material high into the atmosphere. Lava domes grow when viscous magma piles up over the vent."
    ),
    "Sourdough": (
        "Baking sourdough bread starts with a starter of flour and water fermented by wild yeast. The dough is "
        "kneaded, left to rise overnight, shaped into a loaf and baked in a hot oven until the crust is brown and "
        "crisp. A sourdough loaf keeps longer than bread made with baker's yeast, and the lava-hot oven matters."
    ),
    "Chess": (
        "The Sicilian Defence answers the king's pawn with the c-pawn. Grandmasters study openings such as the "
        "Queen's Gambit, where White offers a pawn to control the centre of the board, and endgames where a "
        "single tempo decides the game."
    ),
}
OTHER = {"Pulsars": "Pulsars are rotating neutron stars; the zyzzyva beetle has nothing to do with them. "
                    "Astronomers time pulsar signals with radio telescopes to test gravity."}
CHUNKING = {"chunk_size": 20, "chunk_overlap": 5}


@dataclass(frozen=True)
class Library:
    """A user's embedded documents: title -> media id, and media id -> content."""

    caller: Caller
    ids: dict[str, int]
    contents: dict[int, str]


def search(caller: Caller, query: str, mode: str, **fields: Any) -> list[dict[str, Any]]:
    response = caller.post(SEARCH, json={"query": query, "mode": mode, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["query"] == query and body["mode"] == mode
    return list(body["data"])


def media_of(hits: list[dict[str, Any]]) -> set[int]:
    return {hit["media_id"] for hit in hits}


def build_library(caller: Caller, documents: dict[str, str]) -> Library:
    ids = {}
    for title, content in documents.items():
        response = caller.post("/api/v1/media/add", json={"title": title, "content": content, **CHUNKING})
        assert response.status_code == 201, response.text
        ids[title] = response.json()["media_id"]
    wait_for_jobs(caller.client)
    for media_id in ids.values():
        status = caller.get(f"/api/v1/media/{media_id}/embeddings/status").json()
        assert status["job"]["status"] == "completed" and status["has_embeddings"], status
    return Library(caller, ids, {ids[title]: content for title, content in documents.items()})


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("rag")
    keys = write_keys_file(data, {u: key_of(u) for u in USERS})
    settings = make_settings(data / "data", tiktoken_dir, api_keys_file=keys, single_user_api_key=None,
                             chromadb_force_stub=True, auto_download_models=False)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def free_users(client: TestClient) -> Iterator[str]:  # noqa: ARG001 - the users of that app
    return iter(USERS)


@pytest.fixture(scope="module")
def alice(client: TestClient, free_users: Iterator[str]) -> Library:
    """Three documents searched (never changed) by most tests."""
    return build_library(Caller(client, next(free_users)), CORPUS)


@pytest.fixture(scope="module")
def bob(client: TestClient, free_users: Iterator[str], alice: Library) -> Library:  # noqa: ARG001 - after Alice
    return build_library(Caller(client, next(free_users)), OTHER)


@pytest.fixture
def new_caller(client: TestClient, free_users: Iterator[str]) -> Callable[[], Caller]:
    return lambda: Caller(client, next(free_users))


# --- results -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_results_carry_the_documented_fields_and_true_offsets(alice: Library, mode: str) -> None:
    hits = search(alice.caller, "lava and magma erupting from a volcano", mode, top_k=5)
    assert hits and len(hits) <= 5
    assert hits[0]["media_id"] == alice.ids["Volcanoes"] and hits[0]["title"] == "Volcanoes"
    for hit in hits:
        assert set(hit) == FIELDS
        content = alice.contents[hit["media_id"]]
        assert content[hit["start_char"]:hit["end_char"]] == hit["text"] and hit["text"]
        assert hit["chunk_index"] >= 0 and isinstance(hit["score"], float)
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({(h["media_id"], h["chunk_index"]) for h in hits}) == len(hits)   # no chunk twice


def test_top_k_bounds(alice: Library) -> None:
    caller = alice.caller
    total_chunks = sum(caller.get(f"/api/v1/media/{i}").json()["chunk_count"] for i in alice.ids.values())
    for mode in MODES:
        for top_k in (0, -1, 101, 1000):
            assert_openai_error(caller.post(SEARCH, json={"query": "lava", "mode": mode, "top_k": top_k}), 400,
                                "invalid_value", "top_k")
        assert len(search(caller, "lava", mode, top_k=1)) == 1
    for top_k in ("5", True, 2.5, None):
        assert_openai_error(caller.post(SEARCH, json={"query": "lava", "top_k": top_k}), 400, "invalid_value", "top_k")
    # The largest top_k returns every chunk of the caller's library in vector mode, and nothing else.
    everything = search(caller, "lava", "vector", top_k=100)
    assert len(everything) == total_chunks and media_of(everything) == set(alice.ids.values())


BAD_SEARCHES: dict[str, tuple[Any, str, str | None]] = {
    "filters a string": ({"query": "lava", "filters": "title"}, "invalid_value", "filters"),
    "filters a list": ({"query": "lava", "filters": [{"title": "Chess"}]}, "invalid_value", "filters"),
    "filters a number": ({"query": "lava", "filters": 5}, "invalid_value", "filters"),
    "filter value an object of two operators": (
        {"query": "lava", "filters": {"chunk_index": {"$gte": 0, "$lte": 3}}}, "invalid_value", "filters"),
    "unknown filter operator": (
        {"query": "lava", "filters": {"title": {"$regex": "Ch.*"}}}, "invalid_value", "filters"),
    "range on a string": ({"query": "lava", "filters": {"chunk_index": {"$gt": "1"}}}, "invalid_value", "filters"),
    "$and not a list": ({"query": "lava", "filters": {"$and": {"title": "Chess"}}}, "invalid_value", "filters"),
    "filter value null": ({"query": "lava", "filters": {"title": None}}, "invalid_value", "filters"),
    "unknown mode": ({"query": "lava", "mode": "semantic"}, "invalid_value", "mode"),
    "empty query": ({"query": ""}, "invalid_value", "query"),
    "blank query": ({"query": " \n\t"}, "invalid_value", "query"),
    "query not a string": ({"query": ["lava"]}, "invalid_value", "query"),
    "missing query": ({"mode": "fts"}, "missing_required_parameter", "query"),
    "media_ids not a list": ({"query": "lava", "media_ids": 1}, "invalid_value", "media_ids"),
    "media id a string": ({"query": "lava", "media_ids": ["1"]}, "invalid_value", "media_ids.0"),
    "media id out of range": ({"query": "lava", "media_ids": [2**70]}, "invalid_value", "media_ids.0"),
    "too many media ids": ({"query": "lava", "media_ids": list(range(1, 1002))}, "invalid_value", "media_ids"),
    "unknown field": ({"query": "lava", "k": 3}, "invalid_value", "k"),
    "body not an object": (["lava"], "invalid_value", None),
}


@pytest.mark.parametrize("case", list(BAD_SEARCHES), ids=list(BAD_SEARCHES))
def test_bad_search_is_a_clear_400(alice: Library, case: str) -> None:
    body, code, param = BAD_SEARCHES[case]
    assert_openai_error(alice.caller.post(SEARCH, json=body), 400, code, param)
    assert search(alice.caller, "sourdough loaf", "hybrid", top_k=3)    # still serving


def test_invalid_json_is_400(alice: Library) -> None:
    response = alice.caller.post(SEARCH, content=b'{"query": ', headers={"content-type": "application/json"})
    assert_openai_error(response, 400, "invalid_value")


# --- restricting the search ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_media_ids_restrict_every_mode(alice: Library, mode: str) -> None:
    bread, volcano = alice.ids["Sourdough"], alice.ids["Volcanoes"]
    unrestricted = search(alice.caller, "lava", mode, top_k=20)
    assert {bread, volcano} <= media_of(unrestricted)
    assert media_of(search(alice.caller, "lava", mode, top_k=20, media_ids=[bread])) == {bread}
    assert media_of(search(alice.caller, "lava", mode, top_k=20, media_ids=[bread, volcano])) == {bread, volcano}
    assert search(alice.caller, "lava", mode, media_ids=[]) == []
    assert search(alice.caller, "lava", mode, media_ids=[max(alice.ids.values()) + 1]) == []


@pytest.mark.parametrize("mode", MODES)
def test_metadata_filters_apply_in_every_mode(alice: Library, mode: str) -> None:
    bread, volcano, chess = (alice.ids[t] for t in ("Sourdough", "Volcanoes", "Chess"))
    caller = alice.caller
    assert media_of(search(caller, "lava", mode, top_k=20, filters={"title": "Sourdough"})) == {bread}
    first_chunks = search(caller, "lava pawn", mode, top_k=20, filters={"chunk_index": 0})
    assert first_chunks and {h["chunk_index"] for h in first_chunks} == {0}
    some = search(caller, "lava pawn", mode, top_k=20, filters={"media_id": {"$in": [volcano, chess]}})
    assert media_of(some) == {volcano, chess}
    either = search(caller, "lava pawn", mode, top_k=20,
                    filters={"$or": [{"title": "Chess"}, {"title": {"$eq": "Volcanoes"}}]})
    assert media_of(either) == {volcano, chess}
    assert search(caller, "lava", mode, media_ids=[bread], filters={"title": "Volcanoes"}) == []
    assert search(caller, "lava", mode, filters={"title": "No such title"}) == []


def test_media_embeddings_search_route_takes_the_same_restrictions(alice: Library) -> None:
    bread = alice.ids["Sourdough"]
    body = {"query": "lava", "top_k": 20, "media_ids": [bread], "filters": {"chunk_index": 0}}
    response = alice.caller.post("/api/v1/media/embeddings/search", json=body)
    assert response.status_code == 200 and response.json()["mode"] == "vector", response.text
    hits = response.json()["data"]
    assert hits and {(h["media_id"], h["chunk_index"]) for h in hits} == {(bread, 0)}


# --- soft delete ----------------------------------------------------------------------------------------------
def test_soft_deleted_media_appear_in_no_mode_and_no_route(new_caller: Callable[[], Caller]) -> None:
    library = build_library(new_caller(), {"Volcanoes": CORPUS["Volcanoes"], "Sourdough": CORPUS["Sourdough"]})
    caller, volcano, bread = library.caller, library.ids["Volcanoes"], library.ids["Sourdough"]

    def visible() -> dict[str, set[int]]:
        found = {mode: media_of(search(caller, "lava magma sourdough", mode, top_k=50)) for mode in MODES}
        vector = caller.post("/api/v1/media/embeddings/search", json={"query": "lava magma sourdough", "top_k": 50})
        found["media-embeddings"] = media_of(vector.json()["data"])
        return found

    assert all(ids == {volcano, bread} for ids in visible().values())
    assert caller.delete(f"/api/v1/media/{volcano}").json()["vectors_removed"] == 0   # vectors stay (compactor)
    assert all(ids == {bread} for ids in visible().values()), visible()
    assert all(search(caller, "volcano", mode, media_ids=[volcano]) == [] for mode in MODES)
    assert caller.delete(f"/api/v1/media/{bread}", params={"purge_vectors": "true"}).json()["vectors_removed"] > 0
    assert all(ids == set() for ids in visible().values())


# --- isolation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_search_only_ever_returns_the_callers_chunks(alice: Library, bob: Library, mode: str) -> None:
    assert set(bob.ids.values()) & set(alice.ids.values())   # the same ids exist in both users' libraries
    bob_texts = "".join(bob.contents.values())
    for query in ("lava magma volcano", "sourdough bread", "Sicilian pawn"):
        for extra in ({}, {"media_ids": list(alice.ids.values())}, {"filters": {"title": "Volcanoes"}}):
            hits = search(bob.caller, query, mode, top_k=50, **extra)
            assert all(hit["text"] in bob_texts and hit["title"] == "Pulsars" for hit in hits), hits
    assert all(h["title"] != "Pulsars" for h in search(alice.caller, "zyzzyva pulsars neutron", mode, top_k=50))


def test_a_user_without_media_finds_nothing(alice: Library, new_caller: Callable[[], Caller]) -> None:  # noqa: ARG001
    stranger = new_caller()
    for mode in MODES:
        assert search(stranger, "lava magma volcano", mode) == []
