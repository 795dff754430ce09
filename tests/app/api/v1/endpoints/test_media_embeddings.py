"""HTTP tests of the media embeddings routes on the real app (TestClient, lifespan run) with real
Chroma and the bundled model, plus a real fake OpenAI server on 127.0.0.1 for slow and failing
upstreams: jobs (202, states, progress, counts), bad inputs that write nothing, paging and status
filters, batches (partial with reasons), cancel (terminal states are final), skip/force of unchanged
content, re-embedding that replaces chunks, deleting vectors, failing jobs with a sanitised error,
media deleted mid-job, and isolation (another user gets 404 on every route). One app per module;
each test runs as a fresh user; jobs are awaited on the app's loop (`wait_idle`), never by sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_openai import SECRET_MARKER, FakeOpenAIServer
from fastapi.testclient import TestClient
from support import (
    DEFAULT_MODEL_ID,
    DEFAULT_PROVIDER,
    MODEL,
    WORD_CHUNKING,
    Caller,
    assert_openai_error,
    key_of,
    make_settings,
    wait_for_jobs,
    write_keys_file,
)

from tldw_Server_API.app.main import create_app

USERS = [f"emb-user-{i:02d}" for i in range(60)]
OPENAI_KEY = "sk-upstream-OPENAI-key-0123456789"
SMALL = "openai:text-embedding-3-small"
WORDS = " ".join(f"word{i}" for i in range(40))
JOBS = "/api/v1/media/embeddings/jobs"
RUNNING = ("queued", "chunking", "embedding", "storing")
SLOW = 1.5   # seconds a "slow" upstream answer takes: long enough to act on a job while it runs
PIPELINE_ATTEMPTS = 4   # a transient step failure is tried this often (EMBEDDINGS_PIPELINE_MAX_RETRIES 3, + 1)


def vector_ids(caller: Caller, media_id: int) -> list[str]:
    store = caller.store()
    return [r.id for name in store.list_collections() for r in store.get(name, where={"media_id": media_id})]


def jobs_of(caller: Caller, **params: Any) -> dict[str, Any]:
    response = caller.get(JOBS, params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def job(caller: Caller, job_id: str) -> dict[str, Any]:
    response = caller.get(f"{JOBS}/{job_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def add_media(caller: Caller, content: str | None = None, title: str = "Words", **fields: Any) -> dict[str, Any]:
    """Default content: 40 words, the first one the user id, so no test meets another's cached vectors."""
    fields.setdefault("generate_embeddings", False)
    content = content if content is not None else WORDS.replace("word0", caller.user_id, 1)
    response = caller.post("/api/v1/media/add", json={"title": title, "content": content, **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


def start(caller: Caller, media_id: int, **options: Any) -> dict[str, Any]:
    response = caller.post(f"/api/v1/media/{media_id}/embeddings", json=options)
    assert response.status_code == 202, response.text
    return dict(response.json())


def assert_no_active_jobs(caller: Caller) -> None:
    for status in RUNNING:
        assert jobs_of(caller, status=status)["total"] == 0, status


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(widths={"text-embedding-3-small": 1536}) as server:
        yield server


@pytest.fixture(scope="module")
def client(
    tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path, fake: FakeOpenAIServer
) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("media-embeddings")
    keys = write_keys_file(data, {u: key_of(u) for u in USERS})
    settings = make_settings(
        data / "data", tiktoken_dir, api_keys_file=keys, single_user_api_key=None, auto_download_models=False,
        openai_base_url=fake.base_url, openai_api_key=OPENAI_KEY, embeddings_max_retries=0,
        embeddings_pipeline_concurrency=1,   # one job at a time: a second job stays queued behind a slow one
        **WORD_CHUNKING,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def free_users(client: TestClient) -> Iterator[str]:  # noqa: ARG001 - the users of that app
    return iter(USERS)


@pytest.fixture
def new_caller(client: TestClient, free_users: Iterator[str], fake: FakeOpenAIServer) -> Callable[[], Caller]:
    fake.reset()
    return lambda: Caller(client, next(free_users))


@pytest.fixture
def caller(new_caller: Callable[[], Caller]) -> Caller:
    return new_caller()


# --- a job's life ---------------------------------------------------------------------------------------
def test_job_is_accepted_runs_and_reports_counts_and_timings(caller: Caller) -> None:
    media_id = add_media(caller)["media_id"]
    accepted = start(caller, media_id, chunk_size=10, chunk_overlap=2, chunk_method="words", priority="low")
    assert accepted["status"] == "queued" and accepted["media_id"] == media_id and accepted["skipped"] is False
    wait_for_jobs(caller.client)
    done = job(caller, accepted["job_id"])
    assert done["status"] == "completed" and done["progress"] == 100.0 and done["error"] is None
    assert done["total_chunks"] == done["processed_chunks"] == done["stored_chunks"] == 5   # 40 words, step 8
    assert (done["embedding_model"], done["embedding_provider"]) == (DEFAULT_MODEL_ID, DEFAULT_PROVIDER)
    chunking = (done["chunk_method"], done["chunk_size"], done["chunk_overlap"], done["priority"])
    assert chunking == ("words", 10, 2, "low")
    assert done["created_at"] <= done["started_at"] <= done["completed_at"]
    status = caller.get(f"/api/v1/media/{media_id}/embeddings/status").json()
    assert status["has_embeddings"] is True and status["chunk_count"] == 5
    assert status["embedding_model"] == DEFAULT_MODEL_ID
    assert status["job"]["job_id"] == accepted["job_id"]
    assert sorted(vector_ids(caller, media_id)) == sorted(f"media_{media_id}_chunk_{i}" for i in range(5))


def test_a_provider_without_a_model_uses_that_providers_default_model(caller: Caller) -> None:
    media_id = add_media(caller)["media_id"]
    # the server's default model runs on onnx; naming only the provider takes that provider's default
    accepted = start(caller, media_id, embedding_provider="huggingface", chunk_size=10, chunk_overlap=2)
    wait_for_jobs(caller.client)
    done = job(caller, accepted["job_id"])
    assert done["status"] == "completed", done["error"]
    assert (done["embedding_model"], done["embedding_provider"]) == (MODEL, "huggingface")
    status = caller.get(f"/api/v1/media/{media_id}/embeddings/status").json()
    assert status["chunk_count"] == 5 and status["embedding_provider"] == "huggingface"


def test_status_before_any_job(caller: Caller) -> None:
    media_id = add_media(caller)["media_id"]
    status = caller.get(f"/api/v1/media/{media_id}/embeddings/status").json()
    assert status == {"media_id": media_id, "has_embeddings": False, "chunk_count": 0,
                      "content_hash": status["content_hash"], "embedding_model": None, "embedding_provider": None,
                      "job": None}


# --- bad inputs: a clear 4xx, nothing written -------------------------------------------------------------
BAD_STARTS: dict[str, tuple[Any, int, str, str | None]] = {
    "chunk_size 0": ({"chunk_size": 0}, 400, "invalid_value", "chunk_size"),
    "chunk_size negative": ({"chunk_size": -5}, 400, "invalid_value", "chunk_size"),
    "chunk_size over the max": ({"chunk_size": 10_001}, 400, "invalid_value", "chunk_size"),
    "chunk_size a string": ({"chunk_size": "10"}, 400, "invalid_value", "chunk_size"),
    "overlap equal to size": ({"chunk_size": 10, "chunk_overlap": 10}, 400, "invalid_value", "chunk_overlap"),
    "overlap over size": ({"chunk_size": 10, "chunk_overlap": 11}, 400, "invalid_value", "chunk_overlap"),
    "negative overlap": ({"chunk_overlap": -1}, 400, "invalid_value", "chunk_overlap"),
    "unknown chunk_method": ({"chunk_method": "letters"}, 400, "invalid_value", "chunk_method"),
    "unknown priority": ({"priority": "urgent"}, 400, "invalid_value", "priority"),
    "force_regenerate not a boolean": ({"force_regenerate": "yes"}, 400, "invalid_value", "force_regenerate"),
    "unknown field": ({"chunk_sise": 10}, 400, "invalid_value", "chunk_sise"),
    "body not an object": ([1, 2], 400, "invalid_value", None),
    "unknown model": ({"embedding_model": "no-such-model"}, 404, "model_not_found", None),
    "unknown provider": ({"embedding_provider": "no-such-provider"}, 400, None, None),
}


@pytest.mark.parametrize("case", list(BAD_STARTS), ids=list(BAD_STARTS))
def test_bad_start_is_a_clear_4xx_and_writes_nothing(caller: Caller, case: str) -> None:
    body, status, code, param = BAD_STARTS[case]
    media_id = add_media(caller)["media_id"]
    assert_openai_error(caller.post(f"/api/v1/media/{media_id}/embeddings", json=body), status, code, param)
    assert jobs_of(caller)["total"] == 0 and caller.store().list_collections() == []
    status = caller.get(f"/api/v1/media/{media_id}/embeddings/status")   # the server still answers
    assert status.status_code == 200 and status.json()["job"] is None and status.json()["chunk_count"] == 0


def test_invalid_json_body_is_400_then_a_valid_start_runs(caller: Caller) -> None:
    media_id = add_media(caller)["media_id"]
    response = caller.post(f"/api/v1/media/{media_id}/embeddings", content=b"{oops",
                           headers={"content-type": "application/json"})
    assert_openai_error(response, 400, "invalid_value")
    assert jobs_of(caller)["total"] == 0
    start(caller, media_id, chunk_size=20, chunk_overlap=0)
    wait_for_jobs(caller.client)
    assert len(vector_ids(caller, media_id)) == 2


def test_unknown_and_malformed_ids_are_4xx(caller: Caller) -> None:
    known = add_media(caller)["media_id"]
    for media_id in (known + 1, -1):
        assert_openai_error(caller.post(f"/api/v1/media/{media_id}/embeddings", json={}), 404, "not_found")
        assert_openai_error(caller.get(f"/api/v1/media/{media_id}/embeddings/status"), 404, "not_found")
        assert_openai_error(caller.delete(f"/api/v1/media/{media_id}/embeddings"), 404, "not_found")
    for media_id in ("abc", str(2**70)):
        assert_openai_error(caller.post(f"/api/v1/media/{media_id}/embeddings", json={}), 400, "invalid_value")
        assert_openai_error(caller.get(f"/api/v1/media/{media_id}/embeddings/status"), 400, "invalid_value")
    for job_id in ("job_0123456789abcdef", "nope", "x" * 300):
        assert_openai_error(caller.get(f"{JOBS}/{job_id}"), 404, "not_found", "job_id")
        assert_openai_error(caller.post(f"{JOBS}/{job_id}/cancel"), 404, "not_found", "job_id")
    assert jobs_of(caller)["total"] == 0 and caller.store().list_collections() == []


# --- listing ----------------------------------------------------------------------------------------------
def test_list_jobs_pages_and_filters_by_status(caller: Caller, fake: FakeOpenAIServer) -> None:
    ids = [add_media(caller, f"{caller.user_id} document {i} " + WORDS)["media_id"] for i in range(3)]
    done = [start(caller, media_id, chunk_size=20, chunk_overlap=0)["job_id"] for media_id in ids]
    wait_for_jobs(caller.client)
    fake.fail_next("500", status=400)     # the upstream refuses the request: permanent, no retry
    failed = start(caller, ids[0], embedding_model=SMALL)["job_id"]
    wait_for_jobs(caller.client)

    everything = [*done, failed][::-1]   # newest first
    seen: list[str] = []
    for offset in (0, 2):
        page = jobs_of(caller, limit=2, offset=offset)
        assert page["total"] == 4 and (page["limit"], page["offset"]) == (2, offset)
        seen += [item["job_id"] for item in page["items"]]
    assert seen == everything
    completed = jobs_of(caller, status="completed")
    assert completed["total"] == 3 and {j["job_id"] for j in completed["items"]} == set(done)
    assert [j["job_id"] for j in jobs_of(caller, status="failed")["items"]] == [failed]
    assert jobs_of(caller, status="cancelled")["total"] == 0
    assert_no_active_jobs(caller)
    for params in ({"status": "running"}, {"limit": 0}, {"limit": 501}, {"offset": -1}):
        assert_openai_error(caller.get(JOBS, params=params), 400, "invalid_value")


# --- batches ------------------------------------------------------------------------------------------------
def test_batch_with_an_unknown_id_is_partial_with_the_reason(caller: Caller) -> None:
    first, second = (add_media(caller, f"{caller.user_id} {i} {WORDS}")["media_id"] for i in range(2))
    unknown = second + 100
    response = caller.post("/api/v1/media/embeddings/batch",
                           json={"media_ids": [first, unknown, second, first], "chunk_size": 20, "chunk_overlap": 0})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "partial"
    assert [a["media_id"] for a in body["accepted"]] == [first, second]          # duplicates once
    assert body["rejected"] == [{"media_id": unknown, "reason": f"media {unknown} not found", "code": "not_found"}]
    wait_for_jobs(caller.client)
    assert {job(caller, a["job_id"])["status"] for a in body["accepted"]} == {"completed"}
    assert jobs_of(caller)["total"] == 2

    again = caller.post("/api/v1/media/embeddings/batch", json={"media_ids": [first], "chunk_size": 20,
                                                                   "chunk_overlap": 0}).json()
    assert again["status"] == "accepted" and again["accepted"][0]["skipped"] is True
    none = caller.post("/api/v1/media/embeddings/batch", json={"media_ids": [unknown, unknown + 1]})
    assert none.status_code == 404 and none.json()["error"]["param"] == "media_ids", none.text   # nothing started
    assert jobs_of(caller)["total"] == 2


BAD_BATCHES: dict[str, tuple[Any, str | None]] = {
    "no ids": ({"media_ids": []}, "media_ids"),
    "missing ids": ({"chunk_size": 10}, "media_ids"),
    "too many ids": ({"media_ids": list(range(1, 1002))}, "media_ids"),
    "id not an integer": ({"media_ids": ["1"]}, "media_ids.0"),
    "id out of range": ({"media_ids": [2**70]}, "media_ids.0"),
    "chunk_size 0": ({"media_ids": [1], "chunk_size": 0}, "chunk_size"),
    "overlap over size": ({"media_ids": [1], "chunk_size": 5, "chunk_overlap": 9}, "chunk_overlap"),
    "unknown field": ({"media_ids": [1], "colour": "red"}, "colour"),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES), ids=list(BAD_BATCHES))
def test_bad_batch_is_400_and_writes_nothing(caller: Caller, case: str) -> None:
    body, param = BAD_BATCHES[case]
    add_media(caller)
    assert_openai_error(caller.post("/api/v1/media/embeddings/batch", json=body), 400, None, param)
    assert jobs_of(caller)["total"] == 0
    unknown_model = caller.post("/api/v1/media/embeddings/batch", json={"media_ids": [1], "embedding_model": "nope"})
    assert_openai_error(unknown_model, 404, "model_not_found")
    assert jobs_of(caller)["total"] == 0


# --- skip, force, re-embed ----------------------------------------------------------------------------------
def test_unchanged_content_is_skipped_unless_forced(caller: Caller) -> None:
    media_id = add_media(caller)["media_id"]
    first = start(caller, media_id, chunk_size=10, chunk_overlap=0)
    wait_for_jobs(caller.client)
    skipped = start(caller, media_id, chunk_size=10, chunk_overlap=0)
    assert skipped["skipped"] is True and skipped["job_id"] == first["job_id"] and skipped["status"] == "completed"
    assert jobs_of(caller)["total"] == 1
    forced = start(caller, media_id, chunk_size=10, chunk_overlap=0, force_regenerate=True)
    assert forced["skipped"] is False and forced["job_id"] != first["job_id"]
    wait_for_jobs(caller.client)
    assert job(caller, forced["job_id"])["status"] == "completed" and jobs_of(caller)["total"] == 2
    assert len(vector_ids(caller, media_id)) == 4                       # deterministic ids: no duplicates


def test_reembedding_replaces_chunks_and_never_duplicates(caller: Caller) -> None:
    media_id = add_media(caller)["media_id"]
    content = caller.get(f"/api/v1/media/{media_id}").json()["content"]
    for size, expected in ((5, 8), (20, 2), (4, 10), (4, 10)):
        start(caller, media_id, chunk_size=size, chunk_overlap=0, force_regenerate=True)
        wait_for_jobs(caller.client)
        ids = vector_ids(caller, media_id)
        assert sorted(ids) == sorted(f"media_{media_id}_chunk_{i}" for i in range(expected)), (size, ids)
        status = caller.get(f"/api/v1/media/{media_id}/embeddings/status").json()
        assert status["chunk_count"] == expected and status["job"]["total_chunks"] == expected
        assert caller.get(f"/api/v1/media/{media_id}").json()["chunk_count"] == expected   # FTS chunks agree
        store = caller.store()
        for name in store.list_collections():
            for record in store.get(name, where={"media_id": media_id}):
                meta = record.metadata
                assert record.document == content[meta["start_char"]:meta["end_char"]]
                assert meta["content_hash"] == status["content_hash"]


def test_deleting_embeddings_clears_vectors_and_status(caller: Caller) -> None:
    media_id = add_media(caller, title="Magma notes", content="Magma rises through the volcano and erupts as lava.",
                         generate_embeddings=True)["media_id"]
    wait_for_jobs(caller.client)
    hits = caller.post("/api/v1/media/embeddings/search", json={"query": "volcano lava"}).json()["data"]
    assert [h["media_id"] for h in hits] == [media_id]
    response = caller.delete(f"/api/v1/media/{media_id}/embeddings")
    assert response.status_code == 200 and response.json() == {"media_id": media_id, "deleted": 1}
    status = caller.get(f"/api/v1/media/{media_id}/embeddings/status").json()
    assert status["has_embeddings"] is False and status["chunk_count"] == 0 and vector_ids(caller, media_id) == []
    assert caller.post("/api/v1/media/embeddings/search", json={"query": "volcano lava"}).json()["data"] == []
    assert caller.delete(f"/api/v1/media/{media_id}/embeddings").json()["deleted"] == 0
    assert caller.get(f"/api/v1/media/{media_id}").status_code == 200     # the media itself stays
    # Asking again (same options, no force) embeds anew: there is nothing left to skip to.
    again = start(caller, media_id)
    assert again["skipped"] is False
    wait_for_jobs(caller.client)
    assert caller.get(f"/api/v1/media/{media_id}/embeddings/status").json()["chunk_count"] == 1


# --- cancel --------------------------------------------------------------------------------------------------
def test_cancel_running_and_queued_jobs_and_completed_is_a_no_op(caller: Caller, fake: FakeOpenAIServer) -> None:
    finished = add_media(caller, f"finished document of {caller.user_id}")["media_id"]
    completed = start(caller, finished)["job_id"]
    wait_for_jobs(caller.client)

    running_media, queued_media = (add_media(caller, f"{caller.user_id} {i} {WORDS}")["media_id"] for i in range(2))
    fake.fail_next("slow", delay=SLOW)
    running = start(caller, running_media, embedding_model=SMALL)["job_id"]
    queued = start(caller, queued_media)["job_id"]          # behind the slow job (concurrency 1)
    for job_id in (queued, running):
        response = caller.post(f"{JOBS}/{job_id}/cancel")
        assert response.status_code == 200 and response.json()["status"] == "cancelled", response.text
        assert response.json()["completed_at"] is not None
    wait_for_jobs(caller.client)
    assert job(caller, running)["status"] == "cancelled" and job(caller, running)["stored_chunks"] == 0
    never_ran = job(caller, queued)
    assert never_ran["status"] == "cancelled" and never_ran["started_at"] is None and never_ran["total_chunks"] == 0
    assert vector_ids(caller, running_media) == [] and vector_ids(caller, queued_media) == []
    assert caller.get(f"/api/v1/media/{queued_media}/embeddings/status").json()["has_embeddings"] is False

    for job_id, state in ((completed, "completed"), (running, "cancelled"), (queued, "cancelled")):
        response = caller.post(f"{JOBS}/{job_id}/cancel")
        assert response.status_code == 200 and response.json()["status"] == state
    assert len(vector_ids(caller, finished)) == 1
    assert_no_active_jobs(caller)
    # A cancelled job is not "unchanged content": asking again starts a new job.
    assert start(caller, queued_media)["job_id"] != queued


# --- failures -------------------------------------------------------------------------------------------------
# a transient failure (500) fails the job once its retries run out; a malformed answer at once
@pytest.mark.parametrize(("failure", "times"), [("500", PIPELINE_ATTEMPTS), ("malformed_json", 1)])
def test_failing_upstream_fails_the_job_with_a_sanitised_error(
    caller: Caller, fake: FakeOpenAIServer, failure: Any, times: int
) -> None:
    media_id = add_media(caller)["media_id"]
    fake.fail_next(failure, times=times)
    job_id = start(caller, media_id, embedding_model=SMALL)["job_id"]
    wait_for_jobs(caller.client)
    failed = job(caller, job_id)
    assert failed["status"] == "failed" and failed["completed_at"] is not None and failed["stored_chunks"] == 0
    error = failed["error"]
    assert error and len(error) <= 300 and "\n" not in error
    for secret in (SECRET_MARKER, OPENAI_KEY, "127.0.0.1", "Traceback"):
        assert secret not in error, error
    status = caller.get(f"/api/v1/media/{media_id}/embeddings/status").json()
    assert status["job"]["status"] == "failed" and status["has_embeddings"] is False
    assert vector_ids(caller, media_id) == []
    assert_no_active_jobs(caller)
    retry = start(caller, media_id, embedding_model=SMALL)          # a failed job is never "unchanged"
    assert retry["skipped"] is False and retry["job_id"] != job_id
    wait_for_jobs(caller.client)
    assert job(caller, retry["job_id"])["status"] == "completed" and len(vector_ids(caller, media_id)) == 1


def test_a_transient_upstream_failure_is_retried_and_the_job_completes(caller: Caller, fake: FakeOpenAIServer) -> None:
    media_id = add_media(caller)["media_id"]
    fake.fail_next("500", times=PIPELINE_ATTEMPTS - 1)
    job_id = start(caller, media_id, embedding_model=SMALL)["job_id"]
    wait_for_jobs(caller.client)
    done = job(caller, job_id)
    assert done["status"] == "completed" and done["stored_chunks"] == done["total_chunks"] == 1, done
    assert len(vector_ids(caller, media_id)) == 1 and len(fake.requests) >= PIPELINE_ATTEMPTS


def test_failed_reembed_keeps_reporting_the_stored_vectors(caller: Caller, fake: FakeOpenAIServer) -> None:
    media_id = add_media(caller)["media_id"]
    start(caller, media_id, chunk_size=10, chunk_overlap=0)
    wait_for_jobs(caller.client)
    fake.fail_next("500", status=400)
    start(caller, media_id, embedding_model=SMALL)
    wait_for_jobs(caller.client)
    status = caller.get(f"/api/v1/media/{media_id}/embeddings/status").json()
    assert status["job"]["status"] == "failed"
    assert (status["has_embeddings"], status["chunk_count"], status["embedding_model"]) == (True, 4, DEFAULT_MODEL_ID)


@pytest.mark.parametrize("purge", [True, False])
def test_media_deleted_while_its_job_runs_gets_no_vectors(caller: Caller, fake: FakeOpenAIServer, purge: bool) -> None:
    media_id = add_media(caller)["media_id"]
    fake.fail_next("slow", delay=SLOW)
    job_id = start(caller, media_id, embedding_model=SMALL)["job_id"]
    response = caller.delete(f"/api/v1/media/{media_id}", params={"purge_vectors": str(purge).lower()})
    assert response.status_code == 200, response.text
    wait_for_jobs(caller.client)
    ended = job(caller, job_id)
    assert ended["status"] == "failed" and "not found" in ended["error"], ended
    assert vector_ids(caller, media_id) == []
    assert_no_active_jobs(caller)


# --- the media embeddings search route -------------------------------------------------------------------------
BAD_SEARCHES: dict[str, tuple[dict[str, Any], str | None]] = {
    "top_k 0": ({"query": "x", "top_k": 0}, "top_k"),
    "top_k 1000": ({"query": "x", "top_k": 1000}, "top_k"),
    "top_k a string": ({"query": "x", "top_k": "5"}, "top_k"),
    "blank query": ({"query": "  "}, "query"),
    "missing query": ({"top_k": 3}, "query"),
    "filters a string": ({"query": "x", "filters": "title"}, "filters"),
    "filters a list": ({"query": "x", "filters": [{"title": "a"}]}, "filters"),
    "unknown filter operator": ({"query": "x", "filters": {"title": {"$regex": "a"}}}, "filters"),
    "media_ids not a list": ({"query": "x", "media_ids": 3}, "media_ids"),
    "media id out of range": ({"query": "x", "media_ids": [2**70]}, "media_ids.0"),
    "unknown field": ({"query": "x", "mode": "fts"}, "mode"),
}


@pytest.mark.parametrize("case", list(BAD_SEARCHES), ids=list(BAD_SEARCHES))
def test_bad_media_search_is_400(caller: Caller, case: str) -> None:
    body, param = BAD_SEARCHES[case]
    assert_openai_error(caller.post("/api/v1/media/embeddings/search", json=body), 400, None, param)
    ok = caller.post("/api/v1/media/embeddings/search", json={"query": "anything", "top_k": 100})
    assert ok.status_code == 200 and ok.json()["data"] == [], ok.text


# --- isolation --------------------------------------------------------------------------------------------------
def test_another_user_gets_404_on_every_media_and_job_route(
    new_caller: Callable[[], Caller], fake: FakeOpenAIServer
) -> None:
    alice, bob = new_caller(), new_caller()
    media_id = add_media(alice, title="Alice", content="Alice keeps notes about quasars and pulsars.")["media_id"]
    fake.fail_next("slow", delay=SLOW)
    job_id = start(alice, media_id, embedding_model=SMALL)["job_id"]   # still running while Bob tries

    assert_openai_error(bob.post(f"{JOBS}/{job_id}/cancel"), 404, "not_found")
    assert_openai_error(bob.get(f"{JOBS}/{job_id}"), 404, "not_found")
    assert_openai_error(bob.post(f"/api/v1/media/{media_id}/embeddings", json={}), 404, "not_found")
    assert_openai_error(bob.get(f"/api/v1/media/{media_id}/embeddings/status"), 404, "not_found")
    wait_for_jobs(alice.client)
    assert job(alice, job_id)["status"] == "completed"                 # Bob's cancel did nothing
    default_job = start(alice, media_id)["job_id"]
    wait_for_jobs(alice.client)
    assert_openai_error(bob.delete(f"/api/v1/media/{media_id}/embeddings"), 404, "not_found")
    assert_openai_error(bob.get(f"{JOBS}/{default_job}"), 404, "not_found")
    assert_openai_error(bob.post("/api/v1/media/embeddings/batch", json={"media_ids": [media_id]}), 404, "not_found")
    assert jobs_of(bob)["total"] == 0 and bob.store().list_collections() == []
    for body in ({"query": "quasars and pulsars"}, {"query": "quasars", "media_ids": [media_id]}):
        assert bob.post("/api/v1/media/embeddings/search", json=body).json()["data"] == []
    # Alice still has all of it.
    assert vector_ids(alice, media_id)
    assert jobs_of(alice)["total"] == 2
    hits = alice.post("/api/v1/media/embeddings/search", json={"query": "quasars and pulsars"}).json()["data"]
    assert [h["media_id"] for h in hits] == [media_id]


def test_reembedding_with_a_model_of_another_window_rechunks_for_it(caller: Caller) -> None:
    media_id = add_media(caller, content=" ".join(f"Sentence number {i} about tides." for i in range(400)))["media_id"]
    first = start(caller, media_id, chunk_method="tokens")
    wait_for_jobs(caller.client)
    second = start(caller, media_id, chunk_method="tokens", embedding_model=SMALL)
    wait_for_jobs(caller.client)
    mini, remote = job(caller, first["job_id"]), job(caller, second["job_id"])
    assert mini["status"] == remote["status"] == "completed", (mini, remote)
    # MiniLM: its 256-token window less [CLS]/[SEP]; text-embedding-3-small reads 8,191 tokens, so the
    # configured default size (1,000 here) fits and is used: fewer, longer chunks.
    assert (mini["chunk_size"], remote["chunk_size"]) == (254, 1000)
    assert remote["total_chunks"] < mini["total_chunks"] and remote["truncated_chunks"] == 0


# --- the embedded executor: priority, supersede, summary -----------------------------------------------------
def test_high_priority_jobs_start_before_earlier_normal_and_low_ones(caller: Caller, fake: FakeOpenAIServer) -> None:
    busy, low, normal, high = (add_media(caller, f"{caller.user_id} {i} {WORDS}")["media_id"] for i in range(4))
    fake.fail_next("slow", delay=SLOW)
    start(caller, busy, embedding_model=SMALL)           # holds the one worker (concurrency 1)
    ids = {name: start(caller, media_id, priority=name)["job_id"]
           for name, media_id in (("low", low), ("normal", normal), ("high", high))}
    wait_for_jobs(caller.client)
    started = {name: job(caller, job_id)["started_at"] for name, job_id in ids.items()}
    assert started["high"] < started["normal"] < started["low"], started


def test_a_forced_reembed_supersedes_the_media_job_still_queued(caller: Caller, fake: FakeOpenAIServer) -> None:
    busy, media_id = (add_media(caller, f"{caller.user_id} {i} {WORDS}")["media_id"] for i in range(2))
    fake.fail_next("slow", delay=SLOW)
    start(caller, busy, embedding_model=SMALL)
    first = start(caller, media_id, chunk_size=10, chunk_overlap=0)["job_id"]
    assert start(caller, media_id, chunk_size=10, chunk_overlap=0)["job_id"] == first    # the same job, once
    second = start(caller, media_id, chunk_size=20, chunk_overlap=0, force_regenerate=True)["job_id"]
    wait_for_jobs(caller.client)
    old = job(caller, first)
    assert old["status"] == "cancelled" and "superseded" in old["error"], old
    done = job(caller, second)
    assert done["status"] == "completed" and len(vector_ids(caller, media_id)) == done["total_chunks"] == 3


def test_the_pipeline_summary_is_for_admins(caller: Caller, app_client: TestClient) -> None:
    assert caller.get("/api/v1/embeddings/orchestrator/summary").status_code == 403
    response = app_client.get("/api/v1/embeddings/orchestrator/summary")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "embedded" and [s["stage"] for s in body["stages"]] == ["chunking", "embedding", "storage"]
