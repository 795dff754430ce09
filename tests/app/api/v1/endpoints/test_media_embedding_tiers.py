"""Tier allowances of media embedding jobs (daily chunk quota, concurrent-job cap) and an
operator's pause / drain / resume of a pipeline stage, through the HTTP API of an app on the
embedded executor. Each test uses users of its own, so the order of tests does not matter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import WORD_CHUNKING, Caller, assert_openai_error, key_of, make_settings, wait_for_jobs, write_keys_file

from tldw_Server_API.app.main import create_app

FREE = [f"free-{i}" for i in range(4)]
OPEN = [f"open-{i}" for i in range(4)]
ADMIN_KEY = "key-tier-admin-0123456789"
LIMITS = {"free": {"daily_chunks": 10, "concurrent_jobs": 1}, "enterprise": {}}
WORDS = " ".join(f"word{i}" for i in range(40))
STAGES = "/api/v1/embeddings/orchestrator/stages"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("tiers")
    keys = write_keys_file(data, {u: key_of(u) for u in FREE + OPEN}, admins={"tier-admin": ADMIN_KEY},
                           tiers=dict.fromkeys(FREE, "free"))
    settings = make_settings(data / "data", tiktoken_dir, api_keys_file=keys, single_user_api_key=None,
                             embeddings_tier_limits=LIMITS, **WORD_CHUNKING)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def admin(client: TestClient, method: str, url: str) -> Any:
    response = client.request(method, url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    return response.json()


def add_media(caller: Caller, n: int) -> int:
    content = f"{caller.user_id} {n} " + WORDS
    response = caller.post("/api/v1/media/add", json={"title": f"doc {n}", "content": content,
                                                      "generate_embeddings": False})
    assert response.status_code == 201, response.text
    return int(response.json()["media_id"])


def start(caller: Caller, media_id: int, chunk_size: int) -> Any:
    return caller.post(f"/api/v1/media/{media_id}/embeddings",
                       json={"chunk_method": "words", "chunk_size": chunk_size, "chunk_overlap": 0})


def job(caller: Caller, job_id: str) -> dict[str, Any]:
    response = caller.get(f"/api/v1/media/embeddings/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def run_job(caller: Caller, media_id: int, chunk_size: int) -> dict[str, Any]:
    response = start(caller, media_id, chunk_size)
    assert response.status_code == 202, response.text
    wait_for_jobs(caller.client)
    return job(caller, response.json()["job_id"])


def stage_state(client: TestClient, stage: str) -> dict[str, Any]:
    summary = admin(client, "GET", "/api/v1/embeddings/orchestrator/summary")
    return next(s for s in summary["stages"] if s["stage"] == stage)


def test_the_daily_chunk_quota_fails_the_job_that_would_pass_it_then_refuses_starts(client: TestClient) -> None:
    caller = Caller(client, FREE[0])
    # 42 words (user id, number, 40 words): 10-word chunks are 5, 21-word chunks 2.
    first, second = run_job(caller, add_media(caller, 1), 10), run_job(caller, add_media(caller, 2), 21)
    assert (first["status"], first["total_chunks"], second["status"], second["total_chunks"]) == (
        "completed", 5, "completed", 2)
    over = run_job(caller, add_media(caller, 3), 10)       # 7 used + 5 > 10: refused once its count is known
    assert over["status"] == "failed" and "daily chunk quota" in over["error"], over
    assert over["stored_chunks"] == 0
    usage = caller.get("/api/v1/media/embeddings/usage").json()
    assert usage == {"object": "embedding.usage", "tier": "free", "daily_chunk_quota": 10, "chunks_used_today": 7,
                     "concurrent_jobs_limit": 1, "active_jobs": 0}
    last = run_job(caller, add_media(caller, 4), 14)       # 3 chunks: exactly 10
    assert (last["status"], last["total_chunks"]) == ("completed", 3)
    refused = start(caller, add_media(caller, 5), 21)
    assert_openai_error(refused, 429, "quota_exceeded", "daily_chunks")
    assert refused.json()["error"]["type"] == "insufficient_quota"
    assert caller.get("/api/v1/media/embeddings/usage").json()["chunks_used_today"] == 10


def test_users_of_an_unlimited_tier_are_not_held_by_it(client: TestClient) -> None:
    caller = Caller(client, OPEN[0])
    assert caller.get("/api/v1/media/embeddings/usage").json()["daily_chunk_quota"] is None
    for n in range(3):      # 15 chunks: past the free tier's 10
        assert run_job(caller, add_media(caller, n), 10)["status"] == "completed"


def test_the_concurrent_job_cap_answers_429_with_retry_after_while_a_paused_stage_holds_a_job(
    client: TestClient,
) -> None:
    caller = Caller(client, FREE[1])
    assert admin(client, "POST", f"{STAGES}/chunking/pause") == {"object": "pipeline.stage", "stage": "chunking",
                                                                  "state": "paused"}
    try:
        held = start(caller, add_media(caller, 1), 10)
        assert held.status_code == 202, held.text
        refused = start(caller, add_media(caller, 2), 10)
        assert_openai_error(refused, 429, "rate_limit_exceeded")
        assert int(refused.headers["Retry-After"]) > 0
        state = stage_state(client, "chunking")
        assert state["state"] == "paused" and state["lag"] == 1, state
        assert job(caller, held.json()["job_id"])["status"] == "queued"
    finally:
        assert admin(client, "POST", f"{STAGES}/chunking/resume")["state"] == "running"
    wait_for_jobs(client)
    assert job(caller, held.json()["job_id"])["status"] == "completed"
    assert run_job(caller, add_media(caller, 3), 21)["status"] == "completed"    # room again


def test_a_drain_works_off_what_waits_then_holds_new_jobs_until_resumed(client: TestClient) -> None:
    caller = Caller(client, OPEN[1])
    admin(client, "POST", f"{STAGES}/chunking/pause")
    try:
        waiting = start(caller, add_media(caller, 1), 10).json()["job_id"]
        assert job(caller, waiting)["status"] == "queued"
        assert admin(client, "POST", f"{STAGES}/chunking/drain")["state"] == "draining"
        wait_for_jobs(client)
        assert job(caller, waiting)["status"] == "completed"      # the drain worked it off
        assert stage_state(client, "chunking")["state"] == "paused"   # then stopped taking work
        later = start(caller, add_media(caller, 2), 10).json()["job_id"]
        assert job(caller, later)["status"] == "queued"
        assert stage_state(client, "chunking")["lag"] == 1
    finally:
        admin(client, "POST", f"{STAGES}/chunking/resume")
    wait_for_jobs(client)
    assert job(caller, later)["status"] == "completed"


def test_stage_control_is_for_admins_and_checks_its_arguments(client: TestClient) -> None:
    caller = Caller(client, OPEN[2])
    assert_openai_error(caller.post(f"{STAGES}/chunking/pause"), 403)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert_openai_error(client.post(f"{STAGES}/nope/pause", headers=headers), 400, param="stage")
    assert_openai_error(client.post(f"{STAGES}/chunking/stop", headers=headers), 400, param="action")
    assert stage_state(client, "chunking")["state"] == "running"
