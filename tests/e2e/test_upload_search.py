"""Upload -> chunk -> embed -> store -> search, through HTTP on a live server with the real bundled
model, once on Chroma and once on pgvector: three documents of different topics, each found first
by its own question in every mode; a second user sees none of it; deleting a document removes it
from search at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import ADMIN_KEY, LiveServer, make_settings, write_keys_file

OTHER_KEY = "test-other-user-key-987654321"

DOCS = {
    "volcanoes.md": (
        "# Volcanoes\n\nA volcano is a rupture in the crust of a planet where hot lava, volcanic ash and gases "
        "escape from a magma chamber below the surface. Eruptions of basaltic lava flow slowly, while "
        "explosive eruptions throw pyroclastic material high into the atmosphere.\n"
    ),
    "bread.txt": (
        "Baking sourdough bread starts with a starter of flour and water fermented by wild yeast. "
        "The dough is kneaded, left to rise overnight, shaped into a loaf and baked in a hot oven "
        "until the crust is brown and crisp.\n"
    ),
    "chess.html": (
        "<html><head><title>Chess openings</title><style>p{}</style></head><body><h1>Chess openings</h1>"
        "<p>The Sicilian Defence answers the king's pawn with the c-pawn. Grandmasters study openings "
        "such as the Queen's Gambit, where White offers a pawn to control the centre of the board.</p>"
        "</body></html>"
    ),
}
QUESTIONS = {
    "volcanoes.md": "how does magma erupt from a volcano",
    "bread.txt": "how do I bake a loaf of sourdough",
    "chess.html": "which opening does a grandmaster play in chess",
}
KEYWORDS = {"volcanoes.md": "pyroclastic lava", "bread.txt": "sourdough starter", "chess.html": "Sicilian gambit"}


def _settings(tmp_path: Path, tiktoken: Path, **overrides: Any) -> Any:
    keys = write_keys_file(tmp_path, {"bob": OTHER_KEY}, admins={"alice": ADMIN_KEY})
    return make_settings(tmp_path / "data", tiktoken, api_keys_file=keys, single_user_api_key=None, **overrides)


@pytest.fixture(params=["chroma", "pgvector"])
def server(request: pytest.FixtureRequest, tmp_path: Path, tiktoken_dir: Path) -> Iterator[LiveServer]:
    overrides: dict[str, Any] = {}
    if request.param == "pgvector":
        dsn = request.getfixturevalue("pgvector_dsn")
        overrides["rag"] = {"vector_store_type": "pgvector", "pgvector": {"dsn": dsn}}
    with LiveServer(_settings(tmp_path, tiktoken_dir, **overrides)) as live:
        yield live


def _wait_completed(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/media/embeddings/jobs/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def _search(client: httpx.Client, query: str, mode: str, top_k: int = 5) -> list[dict[str, Any]]:
    response = client.post("/api/v1/rag/search", json={"query": query, "mode": mode, "top_k": top_k})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def test_upload_embed_search_isolation_delete(server: LiveServer) -> None:
    alice = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    bob = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {OTHER_KEY}"}, timeout=60)
    ids: dict[str, int] = {}
    for name, text in DOCS.items():
        response = alice.post("/api/v1/media/add", files={"file": (name, text.encode())},
                               data={"chunk_size": "40", "chunk_overlap": "8"})
        assert response.status_code == 201, response.text
        body = response.json()
        ids[name] = body["media_id"]
        job = _wait_completed(alice, body["job_id"])
        assert job["status"] == "completed", job
        assert job["stored_chunks"] == job["total_chunks"] > 0
    assert alice.get(f"/api/v1/media/{ids['chess.html']}").json()["title"] == "Chess openings"

    for name in DOCS:
        for mode in ("vector", "hybrid"):
            hits = _search(alice, QUESTIONS[name], mode)
            assert hits and hits[0]["media_id"] == ids[name], (mode, name, hits)
        fts = _search(alice, KEYWORDS[name], "fts")
        assert fts and fts[0]["media_id"] == ids[name]
        hit = fts[0]
        original = alice.get(f"/api/v1/media/{hit['media_id']}").json()["content"]
        assert original[hit["start_char"]:hit["end_char"]] == hit["text"]

    for mode in ("vector", "fts", "hybrid"):
        assert _search(bob, QUESTIONS["bread.txt"], mode) == []
    assert bob.get(f"/api/v1/media/{ids['bread.txt']}").status_code == 404

    assert alice.delete(f"/api/v1/media/{ids['bread.txt']}").status_code == 200
    for mode in ("vector", "fts", "hybrid"):
        assert all(h["media_id"] != ids["bread.txt"] for h in _search(alice, QUESTIONS["bread.txt"], mode, 10))
    assert alice.get(f"/api/v1/media/{ids['bread.txt']}").status_code == 404
