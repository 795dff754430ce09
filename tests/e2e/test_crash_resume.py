"""A real server process SIGKILLed while it stores vectors, restarted on the same data: every
media job and vector-store batch completes, and what the jobs and batches say equals what the
stores hold (vectors per media = the job's total = its stored count; a batch's completed count =
its records in the store). The embedded executor resumes from the jobs DB; nothing is patched."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ServerProcess, long_document

DOCS = 4
WORDS = 12000
RECORDS = 800
TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def _jobs(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/api/v1/media/embeddings/jobs", params={"limit": 100})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def _batch(client: httpx.Client, store_id: str, batch_id: str) -> dict[str, Any]:
    response = client.get(f"/api/v1/vector_stores/{store_id}/vectors/batches/{batch_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _work(server: ServerProcess) -> tuple[list[int], tuple[str, str], tuple[str, str]]:
    client = server.client
    media = []
    for i in range(DOCS):
        text = f"Document {i}. " + long_document(WORDS + 100 * i)
        response = client.post("/api/v1/media/add", json={"title": f"doc {i}", "content": text,
                                                          "generate_embeddings": False})
        assert response.status_code == 201, response.text
        media.append(response.json()["media_id"])
    store = client.post("/api/v1/vector_stores", json={"name": "records"}).json()["id"]
    records = [{"id": f"r{i}", "content": f"record {i}: " + long_document(40 + i % 30)[i % 50:]}
               for i in range(RECORDS)]
    batch = client.post(f"/api/v1/vector_stores/{store}/vectors/batches", json={"records": records})
    assert batch.status_code == 200, batch.text
    from_media = client.post("/api/v1/vector_stores/create_from_media", json={"name": "media", "media_ids": media})
    assert from_media.status_code == 200, from_media.text
    body = from_media.json()
    for media_id in media:
        assert client.post(f"/api/v1/media/{media_id}/embeddings", json={}).status_code == 202
    return media, (store, batch.json()["id"]), (body["id"], body["batch"]["id"])


def test_sigkill_mid_storage_then_restart_completes_every_job_and_batch_with_counts_equal_to_the_stores(
    data_dir: Path, tiktoken_dir: Path
) -> None:
    first = ServerProcess(data_dir, tiktoken_dir)
    try:
        media, records_batch, media_batch = _work(first)
        deadline = time.monotonic() + 120
        while True:   # kill once some job stored a part and some has not finished
            jobs = _jobs(first.client)
            if any(j["stored_chunks"] > 0 for j in jobs) and any(j["status"] not in TERMINAL for j in jobs):
                break
            assert time.monotonic() < deadline and not all(j["status"] in TERMINAL for j in jobs), (
                "every job finished before the kill: make the work larger")
            time.sleep(0.02)
    finally:
        first.kill()

    second = ServerProcess(data_dir, tiktoken_dir)
    try:
        client = second.client
        deadline = time.monotonic() + 300
        while True:
            jobs = _jobs(client)
            batches = [_batch(client, *records_batch), _batch(client, *media_batch)]
            if all(j["status"] in TERMINAL for j in jobs) and all(b["status"] != "in_progress" for b in batches):
                break
            assert time.monotonic() < deadline, (jobs, batches)
            time.sleep(0.5)
        assert len(jobs) == DOCS and {j["status"] for j in jobs} == {"completed"}, jobs
        for job in jobs:
            status = client.get(f"/api/v1/media/{job['media_id']}/embeddings/status").json()
            assert status["chunk_count"] == job["total_chunks"] == job["stored_chunks"] > 0, (status, job)
            assert job["processed_chunks"] == job["total_chunks"] and job["progress"] == 100.0, job
        for batch in batches:
            assert batch["status"] == "completed", batch
            counts = batch["file_counts"]
            assert counts["completed"] == counts["total"] and counts["failed"] == 0, batch
        assert client.get(f"/api/v1/vector_stores/{records_batch[0]}").json()["vector_count"] == RECORDS
        media_store = client.get(f"/api/v1/vector_stores/{media_batch[0]}").json()
        assert media_store["status"] == "completed"
        assert media_store["vector_count"] == sum(j["total_chunks"] for j in jobs)
    finally:
        second.stop()
