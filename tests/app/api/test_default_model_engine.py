"""The server's default model (media jobs, RAG queries, vector stores) is the bundled model's bare
id, so the default path runs on the engine the engine choice gives that id, as a client's bare id
does, and holds one engine in memory, not a second one for ingestion. Pinned here to torch with
EMBEDDINGS_ENGINE (so on any CPU, without measuring): an upload's job records huggingface, its
vectors land in the documented collection and RAG search finds them; onnx stays unloaded. Vectors a
server stored under the previous default's name (`onnx:<id>@fp32`) stay in that same collection and
are found by queries the bare default embeds on torch (the same vectors)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import ADMIN_KEY, MODEL, make_settings, wait_for_jobs

from tldw_Server_API.app.core.Embeddings.ChromaDB_Library import media_collection_name
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import (
    create_provider_registry,
    same_vectors,
)
from tldw_Server_API.app.core.Embeddings.stage_context import media_collection
from tldw_Server_API.app.main import create_app

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
USER = "single_user"
DOCS = {
    "volcano": "A volcano is a rupture in the crust of a planet where hot lava, volcanic ash and gases escape "
               "from a magma chamber below the surface; explosive eruptions throw pyroclastic material high.",
    "bread": "Baking sourdough bread starts with a starter of flour and water fermented by wild yeast; the "
             "dough rises overnight, is shaped into a loaf and baked until the crust is brown and crisp.",
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("default-engine"), tiktoken_dir, embeddings_engine="huggingface")
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def add(client: TestClient, title: str, **fields: Any) -> int:
    response = client.post("/api/v1/media/add", headers=AUTH, json={"title": title, "content": DOCS[title], **fields})
    assert response.status_code == 201, response.text
    return int(response.json()["media_id"])


def latest_job(client: TestClient, media_id: int) -> dict[str, Any]:
    status = client.get(f"/api/v1/media/{media_id}/embeddings/status", headers=AUTH).json()
    return dict(status["job"]) | {"chunk_count": status["chunk_count"]}


def top_hit(client: TestClient, query: str) -> int:
    response = client.post("/api/v1/rag/search", headers=AUTH, json={"query": query, "mode": "vector", "top_k": 3})
    assert response.status_code == 200, response.text
    return int(response.json()["data"][0]["media_id"])


def collections(client: TestClient) -> list[str]:
    store = client.app.state.services.storage.vector_stores.for_user(USER)  # type: ignore[attr-defined]
    return sorted(store.list_collections())


def test_uploads_and_queries_run_the_bare_default_on_its_engine(client: TestClient) -> None:
    media_id = add(client, "volcano", generate_embeddings=True)
    wait_for_jobs(client)
    job = latest_job(client, media_id)
    assert job["status"] == "completed", job
    assert (job["embedding_provider"], job["embedding_model"]) == ("huggingface", MODEL)   # not onnx: not pinned
    assert job["chunk_count"] > 0 and collections(client) == [media_collection_name(USER)]
    assert top_hit(client, "how does magma erupt from a volcano") == media_id
    providers = client.get("/api/v1/embeddings/health", headers=AUTH).json()["providers"]
    assert providers["huggingface"]["loaded_models"] == [MODEL]
    assert providers["onnx"]["loaded_models"] == []   # ingestion did not load a second engine of the model


def test_vectors_stored_under_the_previous_default_stay_searchable(client: TestClient) -> None:
    media_id = add(client, "bread", generate_embeddings=True, embedding_model=f"onnx:{MODEL}@fp32")
    wait_for_jobs(client)
    job = latest_job(client, media_id)
    assert job["status"] == "completed", job
    assert (job["embedding_provider"], job["embedding_model"]) == ("onnx", f"{MODEL}@fp32")
    assert job["chunk_count"] > 0                       # the status counts them where they are
    assert collections(client) == [media_collection_name(USER)]
    assert top_hit(client, "how do I bake a loaf of sourdough") == media_id   # a torch query, onnx vectors


def test_an_fp32_variant_shares_its_models_collection_and_other_variants_do_not() -> None:
    base = media_collection_name(USER)
    assert same_vectors(f"{MODEL}@fp32", MODEL) and same_vectors(MODEL, f"{MODEL}@fp32")
    assert media_collection(USER, f"{MODEL}@fp32", MODEL) == media_collection(USER, MODEL, f"{MODEL}@fp32") == base
    assert not same_vectors(f"{MODEL}@int8", MODEL) and not same_vectors("other/model", MODEL)
    assert media_collection(USER, f"{MODEL}@int8", MODEL) != base != media_collection(USER, "other/model@fp32", MODEL)


@pytest.mark.parametrize("engine", ["huggingface", "onnx"])
def test_the_default_resolves_as_a_clients_bare_id(tmp_path: Path, engine: str) -> None:
    registry = create_provider_registry(make_settings(tmp_path, embeddings_engine=engine).engine_config())
    assert registry.default_model == MODEL   # not pinned to the catalog's provider of the id
    assert registry.resolve(registry.default_model).provider.name == registry.route(MODEL)[0] == engine
    asyncio.run(registry.aclose())
