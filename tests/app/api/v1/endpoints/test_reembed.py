"""Re-embedding on the embedded executor, with a real OpenAI-compatible HTTP server as the model
(it counts every text it embeds and answers a deterministic vector per text).

- Editing one paragraph of a 20-chunk document re-embeds only that chunk (one text reaches the
  provider), the job reports `embedded_chunks` 1 and `skipped_chunks` 19, every stored vector is
  the one of its own text, and vector search for the new paragraph's text finds the document;
  with REEMBED_SKIP_UNCHANGED off, or with `force_regenerate`, every chunk goes to the model
  again (where the embedding cache may answer it).
- `POST /embeddings/reembed/schedule` for a user's media with another model: one job per media
  item (the ids answered), each read through the job route; the old model's vectors are dropped
  once the new set is stored. Scheduled at a time, nothing runs before it, and it runs after.
- The compactor route removes the vectors of a soft-deleted media item and nothing else.
- A plain user gets 403; a bad scope is a 400.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_openai import FakeOpenAIServer, expected_vector
from fastapi.testclient import TestClient
from support import make_settings, wait_for_jobs, write_keys_file

from tldw_Server_API.app.core.Embeddings.stage_context import media_collection, media_collections
from tldw_Server_API.app.main import create_app

SMALL = "openai:text-embedding-3-small"
LARGE = "openai:text-embedding-3-large"
WIDTHS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}
ROOT_KEY = "root-admin-key-reembed-0123456789"
USER_KEY = "user-key-carol-reembed-0123456789"
ADMIN = {"Authorization": f"Bearer {ROOT_KEY}"}
USER = {"Authorization": f"Bearer {USER_KEY}"}
PARAGRAPHS = [f"Paragraph {i} tells about the river town number {i} and its old stone bridge." for i in range(20)]
DOC = "\n\n".join(PARAGRAPHS)
OPTIONS = {"embedding_model": SMALL, "chunk_method": "paragraphs", "chunk_size": 1, "chunk_overlap": 0}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(widths=WIDTHS) as server:
        yield server


def client_for(tmp_path: Path, tiktoken_dir: Path, fake: FakeOpenAIServer, **overrides: Any) -> TestClient:
    settings = make_settings(
        tmp_path, tiktoken_dir, single_user_api_key=None,
        api_keys_file=write_keys_file(tmp_path, {"carol": USER_KEY}, {"root": ROOT_KEY}),
        openai_base_url=fake.base_url, openai_api_key="sk-upstream-key-0123456789",
        embeddings_default_model=SMALL, auto_download_models=False, **overrides)
    fake.reset()
    return TestClient(create_app(settings), headers=USER)


@pytest.fixture
def client(tmp_path: Path, tiktoken_dir: Path, fake: FakeOpenAIServer) -> Iterator[TestClient]:
    with client_for(tmp_path, tiktoken_dir, fake) as test_client:
        yield test_client


def texts_sent(fake: FakeOpenAIServer) -> list[str]:
    return [text for r in fake.requests if r.path.endswith("/embeddings") and r.body for text in r.body["input"]]


def upload(client: TestClient, text: str = DOC) -> tuple[int, str]:
    response = client.post("/api/v1/media/add", json={"title": "rivers", "content": text, **OPTIONS})
    assert response.status_code == 201, response.text
    wait_for_jobs(client)
    return int(response.json()["media_id"]), str(response.json()["job_id"])


def job(client: TestClient, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = client.get(f"/api/v1/media/embeddings/jobs/{job_id}", headers=headers or USER)
    assert response.status_code == 200, response.text
    return dict(response.json())


def edit(client: TestClient, media_id: int, text: str, **options: Any) -> str:
    response = client.patch(f"/api/v1/media/{media_id}", json={"content": text, **OPTIONS, **options})
    assert response.status_code == 200, response.text
    wait_for_jobs(client)
    return str(response.json()["job_id"])


def stored(client: TestClient, user_id: str, model: str | None) -> dict[str, Any]:
    """chunk id -> record (with vector) of the user's media collection of `model` (all when None)."""
    services = client.app.state.services  # type: ignore[attr-defined]
    store = services.storage.vector_stores.for_user(user_id)
    names = media_collections(user_id, store.list_collections())
    if model is not None:
        names = [media_collection(user_id, model.split(":", 1)[1], "text-embedding-3-small")]
    return {r.id: r for name in names if name in store.list_collections()
            for r in store.get(name, include_vectors=True)}


def test_editing_one_paragraph_re_embeds_only_that_chunk_and_search_still_finds_it(
    client: TestClient, fake: FakeOpenAIServer,
) -> None:
    media_id, first = upload(client)
    assert job(client, first)["total_chunks"] == 20 and len(texts_sent(fake)) == 20
    done = job(client, first)
    assert (done["embedded_chunks"], done["skipped_chunks"]) == (20, 0), done["error"]

    edited = list(PARAGRAPHS)
    edited[7] = "Paragraph 7 now tells about a lighthouse keeper who paints the ferry boats blue."
    before = len(texts_sent(fake))
    second = edit(client, media_id, "\n\n".join(edited))
    record = job(client, second)
    assert record["status"] == "completed", record
    assert (record["embedded_chunks"], record["skipped_chunks"], record["stored_chunks"]) == (1, 19, 20), record
    assert texts_sent(fake)[before:] == [edited[7]]                       # one provider input, the changed one

    rows = stored(client, "carol", SMALL)
    assert len(rows) == 20
    for row in rows.values():                                             # every vector is of its own text
        assert np.allclose(row.vector, expected_vector(row.document, WIDTHS["text-embedding-3-small"]), atol=1e-6)
    found = client.post("/api/v1/rag/search", json={"query": edited[7], "mode": "vector", "top_k": 3})
    assert found.status_code == 200, found.text
    top = found.json()["data"][0]
    assert top["media_id"] == media_id and top["chunk_index"] == 7 and "lighthouse" in top["text"], top

    # force_regenerate sends every chunk to the model again (the embedding cache may answer them)
    forced = edit(client, media_id, "\n\n".join(edited), force_regenerate=True)
    assert (job(client, forced)["embedded_chunks"], job(client, forced)["skipped_chunks"]) == (20, 0)


def test_with_skip_unchanged_off_every_chunk_is_embedded_again(
    tmp_path: Path, tiktoken_dir: Path, fake: FakeOpenAIServer,
) -> None:
    with client_for(tmp_path, tiktoken_dir, fake, reembed_skip_unchanged=False) as client:
        media_id, _ = upload(client)
        edited = [*PARAGRAPHS[:-1], "The last paragraph changed."]
        second = edit(client, media_id, "\n\n".join(edited))
        assert (job(client, second)["embedded_chunks"], job(client, second)["skipped_chunks"]) == (20, 0)


def test_admin_reembed_with_another_model_drops_the_old_vectors_once_the_new_are_stored(
    client: TestClient, fake: FakeOpenAIServer,
) -> None:
    first_media, _ = upload(client)
    second_media, _ = upload(client, "A short note about tides.\n\nAnd the moon.")
    assert len(stored(client, "carol", SMALL)) == 22
    denied = client.post("/api/v1/embeddings/reembed/schedule", json={"user_id": "carol"})
    assert denied.status_code == 403

    response = client.post("/api/v1/embeddings/reembed/schedule", headers=ADMIN,
                           json={"user_id": "carol", "embedding_model": LARGE, "chunk_method": "paragraphs",
                                 "chunk_size": 1, "chunk_overlap": 0})
    assert response.status_code == 202, response.text
    job_ids = response.json()["job_ids"]
    assert len(job_ids) == 2
    wait_for_jobs(client)
    records = [job(client, job_id) for job_id in job_ids]
    assert {r["status"] for r in records} == {"completed"}, records
    assert sorted((r["media_id"], r["embedded_chunks"], r["skipped_chunks"]) for r in records) == [
        (first_media, 20, 0), (second_media, 2, 0)]
    assert stored(client, "carol", SMALL) == {}                           # the old model's vectors are gone
    assert len(stored(client, "carol", LARGE)) == 22

    bad = client.post("/api/v1/embeddings/reembed/schedule", headers=ADMIN, json={"all_media": True,
                                                                                  "user_id": "carol"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "all_media", bad.text
    missing = client.post("/api/v1/embeddings/reembed/schedule", headers=ADMIN,
                          json={"user_id": "carol", "media_id": 999})
    assert missing.status_code == 404, missing.text


def test_a_scheduled_reembed_waits_for_its_time_then_runs(client: TestClient, fake: FakeOpenAIServer) -> None:
    media_id, _ = upload(client)
    at = datetime.now(UTC) + timedelta(seconds=3)
    response = client.post("/api/v1/embeddings/reembed/schedule", headers=ADMIN,
                           json={"user_id": "carol", "media_id": media_id, "embedding_model": LARGE,
                                 "chunk_method": "paragraphs", "chunk_size": 1, "chunk_overlap": 0,
                                 "at": at.isoformat()})
    assert response.status_code == 202, response.text
    [job_id] = response.json()["job_ids"]
    sent = len(texts_sent(fake))
    record = job(client, job_id)
    assert record["status"] == "queued" and record["scheduled_for"] is not None, record
    time.sleep(1.0)
    assert job(client, job_id)["status"] == "queued" and len(texts_sent(fake)) == sent   # not before its time
    deadline = time.monotonic() + 30
    while job(client, job_id)["status"] != "completed":
        assert time.monotonic() < deadline, job(client, job_id)
        time.sleep(0.2)
    assert datetime.now(UTC) >= at and len(texts_sent(fake)) == sent + 20


def test_the_compactor_route_removes_the_vectors_of_deleted_media_only(client: TestClient) -> None:
    kept, _ = upload(client)
    gone, _ = upload(client, "Soon deleted.\n\nIts second paragraph.")
    assert client.delete(f"/api/v1/media/{gone}").status_code == 200
    assert len(stored(client, "carol", SMALL)) == 22                      # soft delete leaves the vectors
    assert client.post("/api/v1/embeddings/compactor/run").status_code == 403
    report = client.post("/api/v1/embeddings/compactor/run", headers=ADMIN)
    assert report.status_code == 200 and report.json()["removed_vectors"] == 2, report.text
    rows = stored(client, "carol", SMALL)
    assert len(rows) == 20 and {r.metadata["media_id"] for r in rows.values()} == {kept}
    again = client.post("/api/v1/embeddings/compactor/run", headers=ADMIN)
    assert again.json()["removed_vectors"] == 0
