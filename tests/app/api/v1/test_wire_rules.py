"""The boundary rules for text, ids and integers, on every route that takes them (regressions of
hardening defects 1-3: each of these answered 500 before):
- a lone UTF-16 surrogate in any JSON text field is a 400 (`StrictJSONRoute` + `core/wire.py`);
- model names of 250+ or 5,000 characters, or too long for a file name, on every model field,
  answer a 4xx (`parse_model_name`'s rule; the resolver treats unstorable names as absent);
- integers beyond signed 64 bits on every integer field are a 400; every integer in the OpenAPI
  schema carries bounds, so a new field without them fails here.
After each refusal the server still serves."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import MODEL, api_routes, assert_openai_error

from tldw_Server_API.app.api.v1.routing import StrictJSONRoute

SURROGATE = "a\ud800b"


def raw_json(body: dict[str, Any]) -> bytes:
    """`body` as JSON with \\uXXXX escapes (how a client sends a lone surrogate)."""
    return json.dumps(body, ensure_ascii=True).encode()


def assert_still_serves(client: TestClient) -> None:
    response = client.post("/api/v1/embeddings", json={"model": MODEL, "input": "still here"})
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def media_id(app_client: TestClient) -> int:
    response = app_client.post("/api/v1/media/add", json={"title": "wire", "content": "wire rules text",
                                                           "generate_embeddings": False})
    assert response.status_code == 201, response.text
    return int(response.json()["media_id"])


@pytest.fixture(scope="module")
def store_id(app_client: TestClient) -> str:
    response = app_client.post("/api/v1/vector_stores", json={"name": "wire-rules"})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


# --- 1. lone surrogates ---------------------------------------------------------------------------
SURROGATE_CASES = [
    ("/api/v1/embeddings", {"model": MODEL, "input": [SURROGATE]}),
    ("/api/v1/embeddings", {"model": MODEL, "input": SURROGATE}),
    ("/api/v1/embeddings", {"model": SURROGATE, "input": "x"}),
    ("/api/v1/rag/search", {"query": "\ud800", "mode": "hybrid"}),
    ("/api/v1/rag/search", {"query": "x", "filters": {"title": SURROGATE}}),
    ("/api/v1/media/embeddings/search", {"query": SURROGATE}),
    ("/api/v1/vector_stores", {"name": "\udc00"}),
    ("/api/v1/vector_stores", {"name": "ok", "embedding_model": SURROGATE}),
    ("/api/v1/vector_stores", {"name": "ok", "metadata": {"k": SURROGATE}}),
    ("/api/v1/media/add", {"title": SURROGATE, "content": "text"}),
    ("/api/v1/media/add", {"content": SURROGATE}),
    ("/api/v1/embeddings/models/warmup", {"model": SURROGATE}),
    ("/api/v1/vector_stores/{store}/vectors", {"records": [{"content": SURROGATE}]}),
    ("/api/v1/vector_stores/{store}/vectors", {"records": [{"id": SURROGATE, "values": [0.1] * 384}]}),
    ("/api/v1/vector_stores/{store}/query", {"query": SURROGATE}),
    ("/api/v1/vector_stores/{store}/search", {"query": SURROGATE}),
    ("/api/v1/vector_stores/{store}", {"name": SURROGATE}),
]


@pytest.mark.parametrize(("path", "body"), SURROGATE_CASES)
def test_a_lone_surrogate_in_any_text_field_is_a_400(app_client: TestClient, store_id: str, path: str,
                                                     body: dict[str, Any]) -> None:
    response = app_client.post(path.format(store=store_id), content=raw_json(body),
                               headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400)
    assert "surrogate" in error["message"]
    assert_still_serves(app_client)


def test_a_lone_surrogate_in_a_filter_query_parameter_is_a_400(app_client: TestClient, store_id: str) -> None:
    response = app_client.get(f"/api/v1/vector_stores/{store_id}/vectors",
                              params={"filter": json.dumps({"k": SURROGATE})})
    assert_openai_error(response, 400, param="filter")


def test_every_route_decodes_json_with_the_strict_rule(app_client: TestClient) -> None:
    routes = api_routes(list(app_client.app.routes))  # type: ignore[attr-defined]
    assert len(routes) > 30
    loose = [r.path for r in routes if not isinstance(r, StrictJSONRoute)]
    assert loose == []


def test_nan_and_infinity_are_not_json(app_client: TestClient, store_id: str) -> None:
    body = b'{"records": [{"values": [NaN' + b", 0.1" * 383 + b"]}]}"
    response = app_client.post(f"/api/v1/vector_stores/{store_id}/vectors", content=body,
                               headers={"content-type": "application/json"})
    assert_openai_error(response, 400)


# --- 2. model names ---------------------------------------------------------------------------------
LONG_NAMES = ["m" * 250, "org/" + "n" * 246, "x" * 5000, "é" * 100, "ü" * 200 + "/model", "bad\x00name"]


def model_field_calls(name: str, media: int) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("POST", "/api/v1/embeddings", {"model": name, "input": "x"}),
        ("POST", "/api/v1/embeddings", {"model": f"huggingface:{name}", "input": "x"}),
        ("POST", "/api/v1/embeddings", {"model": f"onnx:{name}", "input": "x"}),
        ("GET", f"/api/v1/embeddings/models/{name}", None),
        ("POST", "/api/v1/embeddings/models/warmup", {"model": name}),
        ("POST", "/api/v1/embeddings/models/download", {"model": name}),
        ("POST", "/api/v1/vector_stores", {"name": "long-model", "embedding_model": name}),
        ("POST", "/api/v1/vector_stores/create_from_media", {"media_ids": [media], "embedding_model": name}),
        ("POST", "/api/v1/media/add", {"content": "text", "embedding_model": name}),
        ("POST", f"/api/v1/media/{media}/embeddings", {"embedding_model": name}),
        ("POST", "/api/v1/media/embeddings/batch", {"media_ids": [media], "embedding_model": name}),
    ]


@pytest.mark.parametrize("name", LONG_NAMES, ids=["250", "org-250", "5000", "utf8-200B", "utf8-400B", "nul"])
def test_overlong_or_unstorable_model_names_are_a_4xx_on_every_model_field(
    app_client: TestClient, media_id: int, name: str
) -> None:
    for method, path, body in model_field_calls(name, media_id):
        if name == "bad\x00name" and body is None:
            continue   # a URL cannot carry a NUL
        response = app_client.request(method, path, json=body)
        assert response.status_code in (400, 404), (method, path, response.status_code, response.text[:300])
        assert_openai_error(response, response.status_code)
    assert_still_serves(app_client)


# --- 3. integers ---------------------------------------------------------------------------------
HUGE = [2**63, 10**20, 10**30, -(2**63) - 1]


def integer_calls(value: int, media: int, store: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    return [
        ("GET", f"/api/v1/media?offset={value}", None),
        ("GET", f"/api/v1/media?limit={value}", None),
        ("GET", f"/api/v1/media/{value}", None),
        ("DELETE", f"/api/v1/media/{value}", None),
        ("GET", f"/api/v1/media/{value}/embeddings/status", None),
        ("GET", f"/api/v1/media/embeddings/jobs?offset={value}", None),
        ("GET", f"/api/v1/vector_stores?limit={value}", None),
        ("GET", f"/api/v1/vector_stores/{store}/vectors?offset={value}", None),
        ("GET", f"/api/v1/vector_stores/{store}/vectors?limit={value}", None),
        ("GET", f"/api/v1/vector_stores/{store}/vectors/batches?limit={value}", None),
        ("POST", "/api/v1/vector_stores/create_from_media", {"media_ids": [value]}),
        ("POST", "/api/v1/vector_stores/create_from_media", {"media_ids": [media], "chunk_size": value}),
        ("POST", "/api/v1/vector_stores/create_from_media", {"media_ids": [media], "dimensions": value}),
        ("POST", "/api/v1/vector_stores", {"name": "huge", "dimensions": value}),
        ("POST", f"/api/v1/vector_stores/{store}/query", {"query": "x", "top_k": value}),
        ("POST", f"/api/v1/vector_stores/{store}/search", {"query": "x", "max_num_results": value}),
        ("POST", "/api/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": value}),
        ("POST", "/api/v1/rag/search", {"query": "x", "top_k": value}),
        ("POST", "/api/v1/rag/search", {"query": "x", "media_ids": [value]}),
        ("POST", "/api/v1/media/embeddings/search", {"query": "x", "media_ids": [value]}),
        ("POST", "/api/v1/media/embeddings/batch", {"media_ids": [value]}),
        ("POST", "/api/v1/media/add", {"content": "text", "chunk_size": value}),
        ("POST", "/api/v1/media/add", {"content": "text", "chunk_overlap": value}),
        ("POST", f"/api/v1/media/{value}/embeddings", None),
    ]


@pytest.mark.parametrize("value", HUGE, ids=["2^63", "1e20", "1e30", "-2^63-1"])
def test_integers_beyond_64_bits_are_a_400_on_every_integer_field(
    app_client: TestClient, media_id: int, store_id: str, value: int
) -> None:
    for method, path, body in integer_calls(value, media_id, store_id):
        response = app_client.request(method, path, json=body)
        assert response.status_code == 400, (method, path, response.status_code, response.text[:300])
        assert_openai_error(response, 400)
    assert_still_serves(app_client)


def _integer_schemas(node: Any, where: str, components: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every integer schema under `node` (refs resolved), with where it was found."""
    if isinstance(node, list):
        return [hit for i, item in enumerate(node) for hit in _integer_schemas(item, f"{where}[{i}]", components)]
    if not isinstance(node, dict):
        return []
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return _integer_schemas(components[name], f"{where}->{name}", components)
    found = [(where, node)] if node.get("type") == "integer" else []
    for key, value in node.items():
        found += _integer_schemas(value, f"{where}.{key}", components)
    return found


def test_every_integer_a_request_can_carry_is_bounded(app_client: TestClient) -> None:
    spec = app_client.app.openapi()  # type: ignore[attr-defined]
    components = spec.get("components", {}).get("schemas", {})
    unbounded = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            request_side = {"parameters": operation.get("parameters", []),
                            "body": operation.get("requestBody", {})}
            for where, schema in _integer_schemas(request_side, f"{method.upper()} {path}", components):
                if "maximum" not in schema or "minimum" not in schema:
                    unbounded.append(where)
    assert unbounded == []


@pytest.mark.parametrize("value", [2**63, 2**64 - 1])
def test_stored_and_compared_integers_must_fit_64_bits(app_client: TestClient, store_id: str, value: int) -> None:
    record = {"values": [0.1] * 384, "metadata": {"n": value}}
    response = app_client.post(f"/api/v1/vector_stores/{store_id}/vectors", json={"records": [record]})
    assert_openai_error(response, 400, param="records[0].metadata")
    response = app_client.post(f"/api/v1/vector_stores/{store_id}/query",
                               json={"query": "x", "filter": {"n": {"$gt": value}}})
    assert_openai_error(response, 400)
    response = app_client.post("/api/v1/rag/search", json={"query": "x", "filters": {"n": value}})
    assert_openai_error(response, 400, param="filters")
