"""A re-embed crash, with a real killed process: the server (embedded executor, a real
OpenAI-compatible HTTP server as the model) is SIGKILLed while the edited chunk's embedding is in
flight — after the provider got it, before its vector and hash were written. A chunk's hash is
written only with its vector (one upsert), so after the restart the interrupted job resumes and
that chunk is embedded again instead of skipped: the provider sees the changed text twice and
every unchanged text once in all, every stored vector is the vector of its own text with its own
hash, and vector search finds the edited paragraph.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.fake_openai import FakeOpenAIServer, expected_vector
from tests.support import ServerProcess, make_settings
from tldw_Server_API.app.core.Embeddings.queue_schemas import chunk_hash
from tldw_Server_API.app.core.Embeddings.stage_context import media_collection
from tldw_Server_API.app.core.storage import build_storage

MODEL = "openai:text-embedding-3-small"
WIDTH = 1536
PARAGRAPHS = [f"Paragraph {i} describes the mill town number {i} beside the canal." for i in range(20)]
OPTIONS = {"embedding_model": MODEL, "chunk_method": "paragraphs", "chunk_size": 1, "chunk_overlap": 0}


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(widths={"text-embedding-3-small": WIDTH}) as server:
        yield server


def sent(fake: FakeOpenAIServer) -> list[str]:
    return [text for r in fake.requests if r.path.endswith("/embeddings") and r.body for text in r.body["input"]]


def wait_job(server: ServerProcess, job_id: str, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job = server.client.get(f"/api/v1/media/embeddings/jobs/{job_id}").json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return dict(job)
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_a_crash_between_embedding_and_the_vector_write_re_embeds_that_chunk_after_restart(
    tmp_path: Path, tiktoken_dir: Path, fake: FakeOpenAIServer,
) -> None:
    data = tmp_path / "data"
    env = {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "sk-upstream-key-0123456789",
           "EMBEDDINGS_DEFAULT_MODEL": MODEL, "AUTO_DOWNLOAD_MODELS": "false", "EMBEDDINGS_CACHE_ENABLED": "false"}
    server = ServerProcess(data, tiktoken_dir, **env)
    try:
        added = server.client.post("/api/v1/media/add", json={"title": "mills", "content": "\n\n".join(PARAGRAPHS),
                                                              **OPTIONS})
        assert added.status_code == 201, added.text
        media_id = added.json()["media_id"]
        assert wait_job(server, added.json()["job_id"])["status"] == "completed"
        assert sorted(sent(fake)) == sorted(PARAGRAPHS)

        edited = list(PARAGRAPHS)
        edited[7] = "Paragraph 7 now describes a glassworks that ships blue bottles."
        fake.fail_next("slow", delay=120)         # the provider holds the edited chunk's request...
        patched = server.client.patch(f"/api/v1/media/{media_id}", json={"content": "\n\n".join(edited), **OPTIONS})
        assert patched.status_code == 200, patched.text
        job_id = patched.json()["job_id"]
        deadline = time.monotonic() + 60
        while edited[7] not in sent(fake):
            assert time.monotonic() < deadline, "the edited chunk never reached the provider"
            time.sleep(0.05)
        server.kill()                              # ...and the server dies before writing its vector
    finally:
        server.stop()

    server = ServerProcess(data, tiktoken_dir, **env)
    try:
        job = wait_job(server, job_id)
        assert job["status"] == "completed", job
        assert (job["embedded_chunks"], job["skipped_chunks"], job["stored_chunks"]) == (1, 19, 20), job
        texts = sent(fake)
        assert texts.count(edited[7]) == 2, "the interrupted chunk was skipped instead of embedded again"
        assert all(texts.count(p) == 1 for p in PARAGRAPHS if p != PARAGRAPHS[7]), texts
        found = server.client.post("/api/v1/rag/search", json={"query": edited[7], "mode": "vector", "top_k": 1})
        assert found.status_code == 200, found.text
        assert found.json()["data"][0]["chunk_index"] == 7 and found.json()["data"][0]["media_id"] == media_id
    finally:
        server.stop()

    storage = build_storage(make_settings(data, tiktoken_dir, embeddings_default_model=MODEL))
    try:
        store = storage.vector_stores.for_user("single_user")
        rows = store.get(media_collection("single_user", "text-embedding-3-small", "text-embedding-3-small"),
                         include_vectors=True)
        assert len(rows) == 20
        for row in rows:
            assert row.metadata["chunk_hash"] == chunk_hash(row.document)
            assert np.allclose(row.vector, expected_vector(row.document, WIDTH), atol=1e-6), row.id
    finally:
        storage.close()
