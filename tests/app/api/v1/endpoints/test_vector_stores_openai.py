"""HTTP contract of /api/v1/vector_stores through the real app (TestClient, lifespan run, real
Chroma, the bundled MiniLM embedding `content`), with two users from an API_KEYS_FILE: OpenAI's
shapes, paging, vectors, query and search, background batches, create-from-media, isolation, and
OpenAI's error JSON on every failure (after which the server still answers)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from support import ADMIN_KEY, DEFAULT_MODEL_ID, MODEL, WORD_CHUNKING, cosine_rows, make_settings

from tldw_Server_API.app.main import create_app

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef"
PAGER_KEY = "pager-key-0123456789abcdef"
BASE = "/api/v1/vector_stores"
WIDTH = 384
DOCS = {
    "cat": "The cat sat on the mat and purred in the warm sun.",
    "stocks": "Stock markets fell sharply after the central bank raised interest rates.",
    "plants": "Photosynthesis lets green plants turn sunlight, water and carbon dioxide into sugar.",
}


class Api:
    """One user's view of the app: every call carries that user's key."""

    def __init__(self, client: TestClient, key: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {key}"}

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(BASE + path, params=params, headers=self.headers)

    def post(self, path: str, body: Any = None) -> Any:
        return self.client.post(BASE + path, json=body, headers=self.headers)

    def patch(self, path: str, body: Any) -> Any:
        return self.client.patch(BASE + path, json=body, headers=self.headers)

    def delete(self, path: str) -> Any:
        return self.client.delete(BASE + path, headers=self.headers)

    def ok(self, response: Any) -> dict[str, Any]:
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def error(self, response: Any, status: int, code: str | None = None, param: str | None = None) -> dict[str, Any]:
        """OpenAI's error JSON with `status`; then a valid request still succeeds."""
        assert response.status_code == status, response.text
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert "Traceback" not in response.text
        if code is not None:
            assert body["error"]["code"] == code, body
        if param is not None:
            assert body["error"]["param"] == param, body
        assert self.get("", limit=1).status_code == 200
        error: dict[str, Any] = body["error"]
        return error

    def create(self, **body: Any) -> dict[str, Any]:
        body.setdefault("name", f"store-{uuid.uuid4().hex[:12]}")
        return self.ok(self.post("", body))

    def wait(self, batch_id: str) -> None:
        service = self.client.app.state.services.vector_store_api  # type: ignore[attr-defined]
        assert self.client.portal is not None
        assert self.client.portal.call(service.wait_for_batch, batch_id, 60.0), f"batch {batch_id} still running"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("vector_stores")
    keys = root / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [
        {"key": ALICE_KEY, "user_id": "alice", "roles": ["user"]},
        {"key": BOB_KEY, "user_id": "bob", "roles": ["user"]},
        {"key": PAGER_KEY, "user_id": "pager", "roles": ["user"]},
    ]}), encoding="utf-8")
    settings = make_settings(root / "data", tiktoken_dir, api_keys_file=keys, **WORD_CHUNKING)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def alice(client: TestClient) -> Api:
    return Api(client, ALICE_KEY)


@pytest.fixture
def bob(client: TestClient) -> Api:
    return Api(client, BOB_KEY)


def unit(seed: int, width: int = WIDTH) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(width)
    return [float(x) for x in vector / np.linalg.norm(vector)]


def embed(api: Api, texts: list[str]) -> np.ndarray:
    response = api.client.post("/api/v1/embeddings", json={"model": MODEL, "input": texts}, headers=api.headers)
    return np.array([row["embedding"] for row in api.ok(response)["data"]], dtype=np.float32)


def add_docs(api: Api, store_id: str) -> None:
    records = [{"id": key, "content": text, "metadata": {"topic": key, "n": i}}
               for i, (key, text) in enumerate(DOCS.items())]
    assert api.ok(api.post(f"/{store_id}/vectors", {"records": records}))["upserted"] == 3


# --- stores ---------------------------------------------------------------------------------------------
def test_create_takes_the_width_from_the_model(alice: Api) -> None:
    store = alice.create(metadata={"team": "search"})
    assert store["id"].startswith("vs_") and store["object"] == "vector_store"
    assert store["dimensions"] == WIDTH and store["embedding_model"] == DEFAULT_MODEL_ID
    assert store["status"] == "completed" and store["vector_count"] == 0 and store["usage_bytes"] == 0
    assert store["metadata"] == {"team": "search"} and isinstance(store["created_at"], int)
    assert set(store["file_counts"]) == {"in_progress", "completed", "failed", "cancelled", "total"}
    assert alice.create(dimensions=WIDTH)["dimensions"] == WIDTH
    alice.error(alice.post("", {"name": "narrow", "dimensions": 128}), 400, "dimension_mismatch", "dimensions")
    alice.error(alice.post("", {"name": "bad", "dimensions": "wide"}), 400, param="dimensions")
    alice.error(alice.post("", {"embedding_model": "huggingface:no-such/model-here"}), 404)
    alice.error(alice.post("", {"file_ids": ["file-1"]}), 400, param="file_ids")
    alice.error(alice.post("", {"metadata": {"k": 1}}), 400, param="metadata")


def test_list_pages_forwards_and_backwards(client: TestClient) -> None:
    pager = Api(client, PAGER_KEY)
    ids = [pager.create(name=f"page-{i}")["id"] for i in range(5)]
    first = pager.ok(pager.get("", limit=2, order="asc"))
    assert first["object"] == "list" and [s["id"] for s in first["data"]] == ids[:2]
    assert first["first_id"] == ids[0] and first["last_id"] == ids[1] and first["has_more"] is True
    second = pager.ok(pager.get("", limit=2, order="asc", after=first["last_id"]))
    assert [s["id"] for s in second["data"]] == ids[2:4] and second["has_more"] is True
    last = pager.ok(pager.get("", limit=2, order="asc", after=second["last_id"]))
    assert [s["id"] for s in last["data"]] == ids[4:] and last["has_more"] is False
    back = pager.ok(pager.get("", limit=2, order="asc", before=ids[4]))
    assert [s["id"] for s in back["data"]] == ids[2:4] and back["has_more"] is True
    newest = pager.ok(pager.get(""))  # default: newest first, 20 per page
    assert [s["id"] for s in newest["data"]] == ids[::-1] and newest["has_more"] is False
    pager.error(pager.get("", limit=0), 400, param="limit")
    pager.error(pager.get("", limit=101), 400, param="limit")
    pager.error(pager.get("", order="sideways"), 400)
    pager.error(pager.get("", after="vs_unknown"), 400, param="after")
    for store_id in ids:
        pager.ok(pager.delete(f"/{store_id}"))
    assert pager.ok(pager.get(""))["data"] == []


def test_retrieve_modify_with_post_and_patch_and_name_clashes(alice: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    one, two = alice.create(name=f"one-{tag}"), alice.create(name=f"two-{tag}")
    assert alice.ok(alice.get(f"/{one['id']}")) == one
    renamed = alice.ok(alice.post(f"/{one['id']}", {"name": f"first-{tag}"}))
    assert renamed["name"] == f"first-{tag}" and renamed["id"] == one["id"]
    patched = alice.ok(alice.patch(f"/{one['id']}", {"metadata": {"owner": "alice"}}))
    assert patched["metadata"] == {"owner": "alice"} and patched["name"] == f"first-{tag}"
    assert alice.ok(alice.get(f"/{one['id']}"))["metadata"] == {"owner": "alice"}
    alice.error(alice.patch(f"/{two['id']}", {"name": f"first-{tag}"}), 409, "conflict", "name")
    alice.error(alice.post("", {"name": f"two-{tag}"}), 409, "conflict", "name")
    alice.error(alice.post(f"/{one['id']}", {"name": ""}), 400, param="name")
    alice.error(alice.patch("/vs_missing", {"name": "x"}), 404)
    assert alice.ok(alice.get(f"/{two['id']}"))["name"] == f"two-{tag}"


def test_delete_removes_the_store_and_its_vectors(alice: Api) -> None:
    store = alice.create()
    add_docs(alice, store["id"])
    deleted = alice.ok(alice.delete(f"/{store['id']}"))
    assert deleted == {"id": store["id"], "object": "vector_store.deleted", "deleted": True}
    alice.error(alice.get(f"/{store['id']}"), 404, param="vector_store_id")
    alice.error(alice.delete(f"/{store['id']}"), 404)
    alice.error(alice.post(f"/{store['id']}/query", {"query": "cat"}), 404)
    again = alice.create(name=store["name"])  # the name is free again, and the new store is empty
    assert again["id"] != store["id"] and again["vector_count"] == 0


# --- vectors ---------------------------------------------------------------------------------------------
def test_upsert_with_values_and_with_content(alice: Api) -> None:
    store_id = alice.create()["id"]
    given = unit(1)
    response = alice.ok(alice.post(f"/{store_id}/vectors", {"records": [
        {"id": "given", "values": given, "content": "kept beside the vector", "metadata": {"source": "test"}},
        {"content": DOCS["cat"]},
    ]}))
    assert response["upserted"] == 2 and response["ids"][0] == "given" and response["ids"][1].startswith("vec_")
    stored = alice.ok(alice.get(f"/{store_id}/vectors/given", include_values=True))
    assert stored["content"] == "kept beside the vector" and stored["metadata"] == {"source": "test"}
    assert np.allclose(stored["values"], given, atol=1e-6)
    embedded = alice.ok(alice.get(f"/{store_id}/vectors/{response['ids'][1]}", include_values=True))
    assert cosine_rows(np.array([embedded["values"]]), embed(alice, [DOCS["cat"]]))[0] >= 0.9999
    assert alice.ok(alice.get(f"/{store_id}"))["vector_count"] == 2
    assert alice.ok(alice.get(f"/{store_id}"))["usage_bytes"] == 2 * WIDTH * 4
    alice.error(alice.post(f"/{store_id}/vectors", {"records": [{"values": unit(2, 100)}]}), 400,
                "dimension_mismatch", "records[0].values")
    alice.error(alice.post(f"/{store_id}/vectors", {"records": [{"id": "x"}]}), 400, param="records[0]")
    alice.error(alice.post(f"/{store_id}/vectors", {"records": []}), 400, param="records")
    alice.error(alice.post(f"/{store_id}/vectors", {"records": [{"values": unit(3), "metadata": {"k": [1]}}]}),
                400, param="records[0].metadata")
    alice.error(alice.post(f"/{store_id}/vectors", {"records": [{"id": "d", "values": unit(4)},
                                                                {"id": "d", "values": unit(5)}]}), 400)
    alice.error(alice.post(f"/{store_id}/vectors", {"records": [{"values": ["a"] * WIDTH}]}), 400)
    assert alice.ok(alice.get(f"/{store_id}"))["vector_count"] == 2  # failed upserts wrote nothing


def test_list_vectors_is_paged_and_filtered(alice: Api) -> None:
    store_id = alice.create()["id"]
    records = [{"id": f"r{i}", "values": unit(10 + i), "content": f"record {i}",
                "metadata": {"n": i, "parity": "even" if i % 2 == 0 else "odd"}} for i in range(5)]
    alice.ok(alice.post(f"/{store_id}/vectors", {"records": records}))
    first = alice.ok(alice.get(f"/{store_id}/vectors", limit=2))
    assert [v["id"] for v in first["data"]] == ["r0", "r1"] and first["has_more"] is True
    assert first["first_id"] == "r0" and first["last_id"] == "r1" and first["next_offset"] == 2
    assert first["data"][0]["values"] is None and first["data"][0]["object"] == "vector_store.vector"
    rest = alice.ok(alice.get(f"/{store_id}/vectors", limit=10, offset=first["next_offset"]))
    assert [v["id"] for v in rest["data"]] == ["r2", "r3", "r4"] and rest["has_more"] is False
    assert rest["next_offset"] is None
    even = alice.ok(alice.get(f"/{store_id}/vectors", filter='{"parity": "even"}'))
    assert [v["id"] for v in even["data"]] == ["r0", "r2", "r4"]
    big = alice.ok(alice.get(f"/{store_id}/vectors", filter='{"$and": [{"n": {"$gte": 2}}, {"parity": "odd"}]}'))
    assert [v["id"] for v in big["data"]] == ["r3"]
    alice.error(alice.get(f"/{store_id}/vectors", filter="{not json"), 400, param="filter")
    alice.error(alice.get(f"/{store_id}/vectors", filter='["n"]'), 400, param="filter")
    alice.error(alice.get(f"/{store_id}/vectors", filter='{"n": {"$gt": "two"}}'), 400, param="filter")
    alice.error(alice.get(f"/{store_id}/vectors", limit=0), 400, param="limit")


def test_delete_a_vector(alice: Api) -> None:
    store_id = alice.create()["id"]
    add_docs(alice, store_id)
    deleted = alice.ok(alice.delete(f"/{store_id}/vectors/cat"))
    assert deleted == {"id": "cat", "object": "vector_store.vector.deleted", "deleted": True}
    alice.error(alice.get(f"/{store_id}/vectors/cat"), 404, param="vector_id")
    alice.error(alice.delete(f"/{store_id}/vectors/cat"), 404, param="vector_id")
    assert alice.ok(alice.get(f"/{store_id}"))["vector_count"] == 2
    ids = [hit["id"] for hit in alice.ok(alice.post(f"/{store_id}/query", {"query": DOCS["cat"]}))["data"]]
    assert "cat" not in ids and len(ids) == 2


# --- query and search -----------------------------------------------------------------------------------
def test_query_by_text_and_by_vector_with_filters(alice: Api) -> None:
    store_id = alice.create()["id"]
    add_docs(alice, store_id)
    hits = alice.ok(alice.post(f"/{store_id}/query", {"query": "a kitten napping on a rug", "top_k": 3}))["data"]
    assert [h["id"] for h in hits][0] == "cat" and len(hits) == 3
    assert hits[0]["score"] > hits[1]["score"] >= hits[2]["score"]
    assert hits[0]["content"] == DOCS["cat"] and hits[0]["metadata"] == {"topic": "cat", "n": 0}
    finance = embed(alice, ["interest rates and the stock market"])[0].tolist()
    by_vector = alice.ok(alice.post(f"/{store_id}/query", {"vector": finance, "top_k": 1}))["data"]
    assert [h["id"] for h in by_vector] == ["stocks"]
    filtered = alice.ok(alice.post(f"/{store_id}/query", {"query": "a kitten napping on a rug",
                                                          "filter": {"topic": {"$in": ["stocks", "plants"]}}}))
    assert {h["id"] for h in filtered["data"]} == {"stocks", "plants"}
    assert alice.ok(alice.post(f"/{store_id}/query", {"query": "cat", "filter": {"n": {"$gt": 5}}}))["data"] == []
    alice.error(alice.post(f"/{store_id}/query", {"query": "cat", "filter": "topic=cat"}), 400, param="filter")
    alice.error(alice.post(f"/{store_id}/query", {"query": "cat", "filter": {"n": {"$gt": "x"}}}), 400,
                param="filter")
    alice.error(alice.post(f"/{store_id}/query", {"query": "cat", "filter": {"n": {"$near": 1}}}), 400,
                param="filter")
    alice.error(alice.post(f"/{store_id}/query", {"query": "cat", "top_k": 0}), 400, param="top_k")
    alice.error(alice.post(f"/{store_id}/query", {"query": "cat", "top_k": 1001}), 400, param="top_k")
    alice.error(alice.post(f"/{store_id}/query", {"vector": unit(1, 10)}), 400, "dimension_mismatch", "vector")
    alice.error(alice.post(f"/{store_id}/query", {"query": "cat", "vector": finance}), 400, param="query")
    alice.error(alice.post(f"/{store_id}/query", {}), 400, param="query")
    alice.error(alice.post(f"/{store_id}/query", {"query": "   "}), 400, param="query")


def test_search_has_openai_shape(alice: Api) -> None:
    store_id = alice.create()["id"]
    add_docs(alice, store_id)
    page = alice.ok(alice.post(f"/{store_id}/search", {"query": "how do plants use sunlight?",
                                                       "max_num_results": 2}))
    assert page["object"] == "vector_store.search_results.page"
    assert page["search_query"] == ["how do plants use sunlight?"]
    assert page["has_more"] is False and page["next_page"] is None and len(page["data"]) == 2
    best = page["data"][0]
    assert set(best) == {"file_id", "filename", "score", "attributes", "content"}
    assert best["file_id"] == "plants" and best["attributes"] == {"topic": "plants", "n": 2}
    assert best["content"] == [{"type": "text", "text": DOCS["plants"]}]
    both = alice.ok(alice.post(f"/{store_id}/search", {"query": ["how do plants use sunlight?",
                                                                 "falling share prices"], "max_num_results": 2}))
    assert len(both["search_query"]) == 2 and {r["file_id"] for r in both["data"]} == {"plants", "stocks"}
    filtered = alice.ok(alice.post(f"/{store_id}/search", {
        "query": ["how do plants use sunlight?", "falling share prices"],
        "filters": {"type": "or", "filters": [{"type": "eq", "key": "topic", "value": "cat"},
                                              {"type": "gte", "key": "n", "value": 2}]},
    }))
    assert [r["file_id"] for r in filtered["data"]] == ["plants", "cat"]  # stocks (n=1) is filtered out
    strict = alice.ok(alice.post(f"/{store_id}/search", {"query": "how do plants use sunlight?",
                                                         "ranking_options": {"score_threshold": 0.99}}))
    assert strict["data"] == []
    alice.error(alice.post(f"/{store_id}/search", {"query": "x", "max_num_results": 0}), 400, param="max_num_results")
    alice.error(alice.post(f"/{store_id}/search", {"query": "x", "max_num_results": 51}), 400)
    alice.error(alice.post(f"/{store_id}/search", {"query": "x", "filters": {"type": "near", "key": "n"}}), 400,
                param="filters")
    alice.error(alice.post(f"/{store_id}/search", {"query": "x", "filters": {"type": "gt", "key": "n", "value": "a"}}),
                400, param="filters")
    alice.error(alice.post(f"/{store_id}/search", {"query": []}), 400, param="query")
    alice.error(alice.post(f"/{store_id}/search", {}), 400, "missing_required_parameter", "query")


# --- batches ----------------------------------------------------------------------------------------------
def test_batch_runs_in_the_background_and_completes(alice: Api) -> None:
    store_id = alice.create()["id"]
    records = [{"id": f"b{i}", "values": unit(100 + i)} for i in range(150)]
    records += [{"id": f"t{i}", "content": f"background text number {i}"} for i in range(10)]
    batch = alice.ok(alice.post(f"/{store_id}/vectors/batches", {"records": records}))
    assert batch["id"].startswith("vsb_") and batch["status"] == "in_progress"
    assert batch["vector_store_id"] == store_id and batch["file_counts"]["total"] == 160
    assert batch["file_counts"]["in_progress"] == 160
    alice.wait(batch["id"])
    done = alice.ok(alice.get(f"/{store_id}/vectors/batches/{batch['id']}"))
    assert done["status"] == "completed" and done["last_error"] is None and done["completed_at"] is not None
    assert done["file_counts"] == {"in_progress": 0, "completed": 160, "failed": 0, "cancelled": 0, "total": 160}
    assert alice.ok(alice.get(f"/{store_id}"))["vector_count"] == 160
    listed = alice.ok(alice.get(f"/{store_id}/vectors/batches"))
    assert [b["id"] for b in listed["data"]] == [batch["id"]] and listed["has_more"] is False


def test_batch_with_a_bad_record_ends_failed_with_counts(alice: Api) -> None:
    store_id = alice.create()["id"]
    records = [{"id": f"g{i}", "values": unit(200 + i)} for i in range(4)]
    records.insert(2, {"id": "wrong-width", "values": unit(7, 10)})
    batch = alice.ok(alice.post(f"/{store_id}/vectors/batches", {"records": records}))
    assert batch["status"] == "in_progress"
    alice.wait(batch["id"])
    done = alice.ok(alice.get(f"/{store_id}/vectors/batches/{batch['id']}"))
    assert done["status"] == "failed"
    assert done["file_counts"] == {"in_progress": 0, "completed": 4, "failed": 1, "cancelled": 0, "total": 5}
    assert "10" in done["last_error"]["message"] and done["last_error"]["code"] == "batch_failed"
    assert alice.ok(alice.get(f"/{store_id}"))["vector_count"] == 4
    alice.error(alice.post(f"/{store_id}/vectors/batches", {"records": []}), 400, param="records")
    alice.error(alice.get(f"/{store_id}/vectors/batches/vsb_missing"), 404)
    other = alice.create()["id"]
    alice.error(alice.get(f"/{other}/vectors/batches/{batch['id']}"), 404)


def test_cancel_a_running_batch(alice: Api) -> None:
    store_id = alice.create()["id"]
    records = [{"content": f"a long running batch, record {i}"} for i in range(3000)]
    batch = alice.ok(alice.post(f"/{store_id}/vectors/batches", {"records": records}))
    cancelled = alice.ok(alice.post(f"/{store_id}/vectors/batches/{batch['id']}/cancel"))
    assert cancelled["status"] == "cancelled"
    counts = cancelled["file_counts"]
    assert counts["completed"] < 3000 and counts["cancelled"] == 3000 - counts["completed"] - counts["failed"]
    alice.wait(batch["id"])
    after = alice.ok(alice.get(f"/{store_id}/vectors/batches/{batch['id']}"))
    assert after["status"] == "cancelled"
    assert alice.ok(alice.get(f"/{store_id}"))["vector_count"] == after["file_counts"]["completed"] < 3000
    again = alice.ok(alice.post(f"/{store_id}/vectors/batches/{batch['id']}/cancel"))
    assert again["status"] == "cancelled"


def test_shutdown_cancels_running_batches(tmp_path: Path, tiktoken_dir: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"key": ALICE_KEY, "user_id": "alice"}]}), encoding="utf-8")
    settings = make_settings(tmp_path / "data", tiktoken_dir, api_keys_file=keys)
    with TestClient(create_app(settings)) as first:
        api = Api(first, ALICE_KEY)
        store_id = api.create()["id"]
        records = [{"content": f"interrupted by shutdown, record {i}"} for i in range(3000)]
        batch_id = api.ok(api.post(f"/{store_id}/vectors/batches", {"records": records}))["id"]
    with TestClient(create_app(settings)) as second:
        api = Api(second, ALICE_KEY)
        batch = api.ok(api.get(f"/{store_id}/vectors/batches/{batch_id}"))
        assert batch["status"] == "cancelled" and batch["file_counts"]["completed"] < 3000


def test_a_batch_left_running_by_a_crash_is_failed_at_startup(tmp_path: Path, tiktoken_dir: Path) -> None:
    from tldw_Server_API.app.core.Embeddings.vector_store_batches_db import VectorStoreBatchesDB

    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"key": ALICE_KEY, "user_id": "alice"}]}), encoding="utf-8")
    settings = make_settings(tmp_path / "data", tiktoken_dir, api_keys_file=keys)
    with TestClient(create_app(settings)) as first:
        store_id = Api(first, ALICE_KEY).create()["id"]
    # what a killed process leaves behind: the batch row says in_progress, its task is gone
    orphan = VectorStoreBatchesDB(settings.storage_config().jobs_db_url).create("alice", store_id, total=5)
    with TestClient(create_app(settings)) as second:
        api = Api(second, ALICE_KEY)
        batch = api.ok(api.get(f"/{store_id}/vectors/batches/{orphan.id}"))
        assert batch["status"] == "failed" and batch["file_counts"]["in_progress"] == 0


# --- create from media -------------------------------------------------------------------------------------
def add_media(api: Api, title: str, content: str, **options: Any) -> int:
    response = api.client.post("/api/v1/media/add", headers=api.headers,
                               json={"title": title, "content": content, "generate_embeddings": False, **options})
    assert response.status_code == 201, response.text
    media_id: int = response.json()["media_id"]
    return media_id


def chunk_count(api: Api, media_id: int) -> int:
    count: int = api.ok(api.client.get(f"/api/v1/media/{media_id}", headers=api.headers))["chunk_count"]
    return count


def test_create_from_media_reuses_stored_chunks_and_embeds_them(alice: Api, bob: Api) -> None:
    garden = add_media(alice, "Gardening notes", " ".join(
        f"Tomatoes need full sun, deep watering and rich compost, note {i}." for i in range(40)),
        chunk_size=30, chunk_overlap=5)
    space = add_media(alice, "Space notes", "The rocket reached orbit after a long burn of its second stage.")
    stored = chunk_count(alice, garden) + chunk_count(alice, space)
    assert chunk_count(alice, garden) > 5
    name = f"media-{uuid.uuid4().hex[:8]}"
    store = alice.ok(alice.post("/create_from_media", {"name": name, "media_ids": [garden, space]}))
    assert store["object"] == "vector_store" and store["name"] == name and store["status"] == "in_progress"
    assert store["batch"]["status"] == "in_progress" and store["batch"]["file_counts"]["total"] == 2
    alice.wait(store["batch"]["id"])
    batch = alice.ok(alice.get(f"/{store['id']}/vectors/batches/{store['batch']['id']}"))
    assert batch["status"] == "completed" and batch["file_counts"]["completed"] == 2
    done = alice.ok(alice.get(f"/{store['id']}"))
    assert done["status"] == "completed" and done["vector_count"] == stored
    hits = alice.ok(alice.post(f"/{store['id']}/search", {"query": "spacecraft launch", "max_num_results": 1}))
    assert hits["data"][0]["file_id"] == f"media_{space}" and hits["data"][0]["filename"] == "Space notes"
    attributes = hits["data"][0]["attributes"]
    assert attributes["media_id"] == space and attributes["chunk_index"] == 0 and attributes["start_char"] == 0
    garden_chunks = alice.ok(alice.get(f"/{store['id']}/vectors", filter=f'{{"media_id": {garden}}}', limit=100))
    assert len(garden_chunks["data"]) == stored - 1
    assert garden_chunks["data"][0]["id"] == f"media_{garden}_chunk_0"
    assert garden_chunks["data"][0]["content"].startswith("Tomatoes need full sun")
    alice.error(alice.post("/create_from_media", {"name": name, "media_ids": [space]}), 409)
    alice.error(alice.post("/create_from_media", {"media_ids": [999_999]}), 404, param="media_id")
    alice.error(alice.post("/create_from_media", {"media_ids": []}), 400, param="media_ids")
    alice.error(alice.post("/create_from_media", {"media_ids": [space], "chunk_method": "letters"}), 400,
                param="chunk_method")
    alice.error(alice.post("/create_from_media", {"media_ids": [space], "chunk_size": 1000}), 400,
                param="chunk_size")   # 1,000 words cannot fit the model's 256-token window
    bob.error(bob.post("/create_from_media", {"media_ids": [space]}), 404)  # alice's media


def test_create_from_media_with_chunking_options_chunks_afresh(alice: Api) -> None:
    text = " ".join(f"Bees pollinate the apple blossoms in spring, note {i}." for i in range(30))
    orchard = add_media(alice, "Orchard", text, chunk_size=20, chunk_overlap=0)
    assert chunk_count(alice, orchard) > 5
    store = alice.ok(alice.post("/create_from_media", {"media_ids": [orchard], "chunk_method": "tokens",
                                                       "chunk_size": 250, "chunk_overlap": 0}))
    alice.wait(store["batch"]["id"])
    records = alice.ok(alice.get(f"/{store['id']}/vectors"))["data"]
    assert sorted(r["id"] for r in records) == [f"media_{orchard}_chunk_0", f"media_{orchard}_chunk_1"]
    assert " ".join(r["content"] for r in sorted(records, key=lambda r: r["id"])) == text


# --- isolation ---------------------------------------------------------------------------------------------
def test_another_user_gets_404_everywhere(alice: Api, bob: Api) -> None:
    store_id = alice.create()["id"]
    add_docs(alice, store_id)
    batch = alice.ok(alice.post(f"/{store_id}/vectors/batches", {"records": [{"values": unit(9)}]}))
    alice.wait(batch["id"])
    assert store_id not in {s["id"] for s in bob.ok(bob.get("", limit=100))["data"]}
    calls = [
        bob.get(f"/{store_id}"), bob.post(f"/{store_id}", {"name": "mine"}), bob.patch(f"/{store_id}", {"name": "m"}),
        bob.delete(f"/{store_id}"), bob.post(f"/{store_id}/vectors", {"records": [{"values": unit(1)}]}),
        bob.get(f"/{store_id}/vectors"), bob.get(f"/{store_id}/vectors/cat"), bob.delete(f"/{store_id}/vectors/cat"),
        bob.post(f"/{store_id}/query", {"query": "cat"}), bob.post(f"/{store_id}/search", {"query": "cat"}),
        bob.post(f"/{store_id}/vectors/batches", {"records": [{"values": unit(1)}]}),
        bob.get(f"/{store_id}/vectors/batches"), bob.get(f"/{store_id}/vectors/batches/{batch['id']}"),
        bob.post(f"/{store_id}/vectors/batches/{batch['id']}/cancel"),
    ]
    for response in calls:
        bob.error(response, 404)
    assert alice.ok(alice.get(f"/{store_id}"))["vector_count"] == 4  # untouched by bob's attempts
    bob.error(bob.client.get(BASE), 401)  # no key at all


def test_unknown_routes_and_bad_bodies_answer_openai_errors(alice: Api) -> None:
    store_id = alice.create()["id"]
    alice.error(alice.client.post(BASE + f"/{store_id}/vectors", content=b"{not json", headers={
        **alice.headers, "content-type": "application/json"}), 400)
    alice.error(alice.post(f"/{store_id}/vectors", {"records": "all of them"}), 400, param="records")
    alice.error(alice.get(f"/{store_id}/nothing-here"), 404)
    alice.error(alice.client.put(BASE + f"/{store_id}", json={}, headers=alice.headers), 405)


# --- the official client ---------------------------------------------------------------------------------
@pytest.mark.live
def test_the_official_openai_client_parses_our_shapes(live_server: Any) -> None:
    import httpx
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=f"{live_server.base_url}/api/v1", api_key=ADMIN_KEY, max_retries=0)
    store = client.vector_stores.create(name=f"sdk-{uuid.uuid4().hex[:8]}", metadata={"via": "sdk"})
    assert store.id.startswith("vs_") and store.status == "completed" and store.metadata == {"via": "sdk"}
    records = [{"id": key, "content": text, "metadata": {"topic": key}} for key, text in DOCS.items()]
    upsert = httpx.post(f"{live_server.base_url}{BASE}/{store.id}/vectors", json={"records": records},
                        headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    assert upsert.status_code == 200, upsert.text
    assert client.vector_stores.retrieve(store.id).usage_bytes == 3 * WIDTH * 4
    assert client.vector_stores.update(store.id, name=store.name + "-renamed").name == store.name + "-renamed"
    assert store.id in [s.id for s in client.vector_stores.list(limit=100)]
    page = client.vector_stores.search(store.id, query="a kitten napping on a rug", max_num_results=2)
    results = list(page)
    assert len(results) == 2 and results[0].file_id == "cat" and results[0].content[0].text == DOCS["cat"]
    assert results[0].attributes == {"topic": "cat"} and results[0].score > results[1].score
    filtered = list(client.vector_stores.search(store.id, query="cat", filters={"type": "eq", "key": "topic",
                                                                                  "value": "plants"}))
    assert [r.file_id for r in filtered] == ["plants"]
    deleted = client.vector_stores.delete(store.id)
    assert deleted.deleted and deleted.id == store.id
    with pytest.raises(NotFoundError):
        client.vector_stores.retrieve(store.id)


# --- every vector store backend --------------------------------------------------------------------------
@pytest.fixture(params=["chroma", "pgvector"])
def backend_client(request: pytest.FixtureRequest, tmp_path: Path, tiktoken_dir: Path) -> Iterator[TestClient]:
    overrides: dict[str, Any] = {}
    if request.param == "pgvector":
        dsn = request.getfixturevalue("pgvector_dsn")
        overrides["rag"] = {"vector_store_type": "pgvector", "pgvector": {"dsn": dsn}}
    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump({"keys": [{"key": ALICE_KEY, "user_id": f"alice-{uuid.uuid4().hex[:8]}"},
                                             {"key": BOB_KEY, "user_id": f"bob-{uuid.uuid4().hex[:8]}"}]}))
    with TestClient(create_app(make_settings(tmp_path / "data", tiktoken_dir, api_keys_file=keys,
                                             **overrides))) as test_client:
        yield test_client


def test_the_same_flow_on_every_backend(backend_client: TestClient) -> None:
    alice, bob = Api(backend_client, ALICE_KEY), Api(backend_client, BOB_KEY)
    store_id = alice.create()["id"]
    add_docs(alice, store_id)
    alice.ok(alice.post(f"/{store_id}/vectors", {"records": [{"id": "v", "values": unit(3), "metadata": {"n": 9}}]}))
    alice.error(alice.post(f"/{store_id}/vectors", {"records": [{"values": unit(3, 8)}]}), 400, "dimension_mismatch")
    listed = alice.ok(alice.get(f"/{store_id}/vectors", limit=2, filter='{"n": {"$gte": 1}}'))
    assert [v["id"] for v in listed["data"]] == ["stocks", "plants"] and listed["has_more"] is True
    hits = alice.ok(alice.post(f"/{store_id}/query", {"query": "a kitten napping on a rug", "top_k": 2}))["data"]
    assert hits[0]["id"] == "cat"
    assert alice.ok(alice.post(f"/{store_id}/query", {"vector": unit(3), "top_k": 1}))["data"][0]["id"] == "v"
    page = alice.ok(alice.post(f"/{store_id}/search", {"query": "photosynthesis", "filters": {
        "type": "ne", "key": "topic", "value": "cat"}}))
    assert page["data"][0]["file_id"] == "plants" and "cat" not in {r["file_id"] for r in page["data"]}
    batch = alice.ok(alice.post(f"/{store_id}/vectors/batches", {"records": [
        {"id": "ok", "content": "a background record"}, {"id": "bad", "values": unit(1, 5)}]}))
    alice.wait(batch["id"])
    done = alice.ok(alice.get(f"/{store_id}/vectors/batches/{batch['id']}"))
    assert done["status"] == "failed" and done["file_counts"]["completed"] == 1 and done["file_counts"]["failed"] == 1
    alice.ok(alice.delete(f"/{store_id}/vectors/cat"))
    assert alice.ok(alice.get(f"/{store_id}"))["vector_count"] == 4
    bob.error(bob.post(f"/{store_id}/query", {"query": "cat"}), 404)
    assert bob.ok(bob.get(""))["data"] == []
    alice.ok(alice.delete(f"/{store_id}"))
    alice.error(alice.get(f"/{store_id}/vectors"), 404)
