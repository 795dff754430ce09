"""API docs on an offline machine: `/docs` and `/redoc` load their scripts and styles from this
server (no CDN), every asset they name is served, and the schema carries the Bearer and X-API-KEY
schemes on every authenticated route, so Swagger's Authorize button works."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient


def test_docs_pages_reference_only_local_assets_and_they_are_served(app_client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = app_client.get(page)
        assert html.status_code == 200, page
        urls = re.findall(r"""(?:src|href|url)\s*[=:(]\s*['"]([^'"]+)['"]""", html.text)
        assert urls, html.text[:500]
        external = [u for u in urls if u.startswith(("http:", "https:", "//"))]
        assert external == [], (page, external)                   # nothing from a CDN
        for url in urls:
            if url.startswith("/docs-static/"):
                asset = app_client.get(url)
                assert asset.status_code == 200 and len(asset.content) > 1000, url
    assert "persistAuthorization" in app_client.get("/docs").text


def test_authenticated_routes_declare_the_bearer_scheme(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {"type": "http", "scheme": "bearer", "description": schemes["HTTPBearer"]
                                     ["description"]}
    assert schemes["APIKeyHeader"]["name"] == "X-API-KEY"
    embeddings = spec["paths"]["/api/v1/embeddings"]["post"]
    assert {"HTTPBearer": []} in embeddings["security"]
    assert "security" not in spec["paths"]["/health/live"]["get"]
    secured = [p for p, ops in spec["paths"].items() for op in ops.values() if "security" in op]
    assert len(secured) > 40


def test_every_request_body_and_path_parameter_has_an_example(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    missing = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path" and "example" not in parameter:
                    missing.append(f"{method} {path} path {parameter['name']}")
            for content_type, media in operation.get("requestBody", {}).get("content", {}).items():
                ref = media["schema"].get("$ref") or next(
                    (s["$ref"] for s in media["schema"].get("anyOf", []) if "$ref" in s), None)
                named = schemas.get(ref.rsplit("/", 1)[-1], {}) if ref else {}
                has = "example" in media or "examples" in named or content_type == "multipart/form-data"
                if not has:
                    missing.append(f"{method} {path} body {content_type}")
    assert missing == [], missing
    assert "requestBody" in spec["paths"]["/api/v1/media/add"]["post"]      # read by hand: documented anyway
    assert "requestBody" in spec["paths"]["/api/v1/files"]["post"]


def test_the_body_examples_are_valid_requests() -> None:
    from pydantic import BaseModel

    from tldw_Server_API.app.api.v1.examples import BODY_EXAMPLES
    from tldw_Server_API.app.api.v1.schemas import (
        embeddings,
        embeddings_operations,
        media,
        media_embeddings,
        rag,
        vector_stores,
    )

    modules = (embeddings, embeddings_operations, media, media_embeddings, rag, vector_stores)
    for name, example in BODY_EXAMPLES.items():
        model = next(getattr(m, name) for m in modules
                     if isinstance(getattr(m, name, None), type) and issubclass(getattr(m, name), BaseModel))
        model.model_validate(example)          # raises on an example the route would refuse
