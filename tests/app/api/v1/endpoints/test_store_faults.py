"""A vector store that fails (hardening defect 5): Chroma unwritable and pgvector unreachable
behave alike. Vector and hybrid search, store creation and embedding jobs answer 503
`service_unavailable` (jobs fail with that sanitised reason), FTS search is still served, health
says `degraded` naming `vector_store`, readiness is 503, and the server recovers once the store
does. Chroma is made unwritable with `chattr +i` (immutable even for root, as CI runs).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import (
    Caller,
    assert_openai_error,
    free_port,
    key_of,
    make_settings,
    wait_for_jobs,
    write_keys_file,
)

from tldw_Server_API.app.main import create_app

DOC = "Volcanoes erupt when magma rises through the crust. Lava flows cool into basalt rock."


def app_for(data: Path, tiktoken: Path, **overrides: Any) -> TestClient:
    keys = write_keys_file(data, {"alice": key_of("alice")})
    return TestClient(create_app(make_settings(data, tiktoken, api_keys_file=keys, single_user_api_key=None,
                                               **overrides)))


def chattr(flag: str, path: Path) -> None:
    run = subprocess.run(["chattr", "-R", flag, str(path)], capture_output=True, text=True)
    if run.returncode != 0:
        from support import require_service

        require_service(f"chattr {flag} (root on a file system with immutable files): {run.stderr.strip()}")


def assert_store_down(alice: Caller, client: TestClient) -> None:
    for mode in ("vector", "hybrid"):
        response = alice.post("/api/v1/rag/search", json={"query": "volcano magma", "mode": mode})
        assert_openai_error(response, 503, code="service_unavailable")
        assert "Retry-After" in response.headers
        assert "InternalError" not in response.text and "bindings" not in response.text
    fts = alice.post("/api/v1/rag/search", json={"query": "magma", "mode": "fts"})
    assert fts.status_code == 200 and fts.json()["data"], fts.text
    assert_openai_error(alice.post("/api/v1/vector_stores", json={"name": "down"}), 503, code="service_unavailable")

    health = client.get("/api/v1/embeddings/health").json()
    assert health["status"] == "degraded"
    assert health["components"]["vector_store"]["status"] == "unavailable"
    assert health["components"]["jobs_db"]["status"] == "ok"
    ready = client.get("/health/ready")
    error = assert_openai_error(ready, 503, code="not_ready")
    assert "vector_store" in error["message"]
    assert client.get("/health/live").status_code == 200


def upload(alice: Caller, content: str = DOC) -> dict[str, Any]:
    response = alice.post("/api/v1/media/add", json={"title": "volcanoes", "content": content})
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.fixture
def chroma_data(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    subprocess.run(["chattr", "-R", "-i", str(tmp_path)], capture_output=True)


def test_unwritable_chroma_is_a_503_fts_still_serves_and_health_says_degraded(
    chroma_data: Path, tiktoken_dir: Path
) -> None:
    with app_for(chroma_data, tiktoken_dir) as client:
        alice = Caller(client, "alice")
        upload(alice)
        wait_for_jobs(client)
        assert client.get("/health/ready").status_code == 200
    chattr("+i", chroma_data / "users" / "alice" / "chroma")   # then a restart: the client opens anew
    with app_for(chroma_data, tiktoken_dir) as client:
        alice = Caller(client, "alice")
        assert_store_down(alice, client)
        job_id = upload(alice, DOC + " A second document about basalt.")["job_id"]
        wait_for_jobs(client)
        job = alice.get(f"/api/v1/media/embeddings/jobs/{job_id}").json()
        assert job["status"] == "failed"
        assert job["error"] == "ServiceUnavailable: the vector store is unavailable", job

        chattr("-i", chroma_data / "users" / "alice" / "chroma")   # the store recovers: so does the server
        response = alice.post("/api/v1/rag/search", json={"query": "volcano magma", "mode": "vector"})
        assert response.status_code == 200 and response.json()["data"], response.text
        assert client.get("/api/v1/embeddings/health").json()["components"]["vector_store"]["status"] == "ok"


def test_unreachable_pgvector_is_a_503_fts_still_serves_and_health_says_degraded(
    tmp_path: Path, tiktoken_dir: Path
) -> None:
    dsn = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing?connect_timeout=2"
    with app_for(tmp_path, tiktoken_dir, rag={"vector_store_type": "pgvector", "pgvector": {"dsn": dsn}}) as client:
        alice = Caller(client, "alice")
        job_id = upload(alice)["job_id"]
        wait_for_jobs(client)
        job = alice.get(f"/api/v1/media/embeddings/jobs/{job_id}").json()
        assert job["status"] == "failed" and "unavailable" in job["error"], job
        assert_store_down(alice, client)
