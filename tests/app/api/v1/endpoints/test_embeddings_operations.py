"""Operating the Redis pipeline through the admin routes, on real Redis, pgvector and a real
OpenAI-compatible HTTP server (the provider that rejects, then is fixed); the stage workers run
in this process in burst mode (`StageWorker`, the same loop the worker processes run).

- A poison message (the provider rejects the job's text: a permanent error) lands in the
  embedding stage's DLQ; requeue before approval is 409; approval needs a note; after the fix the
  requeue completes the job; a second requeue stores and embeds nothing again.
- Encrypted dead letters are unreadable with `redis-cli` and readable through the admin route;
  an old key still decrypts after rotation.
- Signed messages: a valid pipeline completes; tampered and stale entries go to the DLQ with
  `bad_signature`, unprocessed, their job untouched.
- A breaker reset reaches a worker's own breaker through Redis.
- Job skip, priority bump (the waiting entry moves), idempotency ledger lookup.
- The operator's command line (`python -m tldw_Server_API.ops`) against a live server: DLQ
  stats/list/show/approve/requeue/ignore/purge, reembed, compact, audit, exit codes.
- Every admin route answers 403 to a plain user; every one that changes state leaves exactly one
  audit event (the table of calls below must cover every such route).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from fake_openai import FakeOpenAIServer
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from support import LiveServer, api_routes, make_settings, write_keys_file

from tldw_Server_API.app.api.v1.deps import audited_admin, require_admin
from tldw_Server_API.app.core.config import Settings
from tldw_Server_API.app.core.Embeddings.dead_letters import DeadLetterQueue
from tldw_Server_API.app.core.Embeddings.dlq_crypto import DLQCrypto, DLQDecryptError, generate_key_entry
from tldw_Server_API.app.core.Embeddings.request_signing import MessageSigner
from tldw_Server_API.app.core.Embeddings.worker_config import StreamNames, WorkerConfig
from tldw_Server_API.app.core.Embeddings.workers.base_worker import StageWorker
from tldw_Server_API.app.core.services import build_worker_context
from tldw_Server_API.app.main import create_app

MODEL = "openai:text-embedding-3-small"
USER_KEY = "user-key-bob-0123456789abcdef"
ROOT_KEY = "root-admin-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ROOT_KEY}"}
USER = {"Authorization": f"Bearer {USER_KEY}"}
SECRET = "pipeline-signing-secret-0123456789"
MARKER = "TOP-SECRET-PAYLOAD-MARKER-5b1e"
TEXT = ("Dead letters hold what the pipeline could not process. " * 3 + "\n\n") * 4


@dataclass
class Ops:
    client: TestClient
    settings: Settings
    fake: FakeOpenAIServer
    names: StreamNames
    redis: redis.Redis

    def work(self) -> None:
        """Run every stage until the streams are empty (burst), as a worker process would."""
        run_burst(self.settings)

    def upload(self, text: str = TEXT, **options: Any) -> dict[str, Any]:
        response = self.client.post("/api/v1/media/add", json={"title": "ops", "content": text,
                                                               "embedding_model": MODEL, **options})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/media/embeddings/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def audit(self, action: str) -> list[dict[str, Any]]:
        response = self.client.get("/api/v1/embeddings/audit", params={"action": action, "limit": 100})
        assert response.status_code == 200, response.text
        return list(response.json()["data"])

    def dlq(self, stage: str = "embedding") -> list[dict[str, Any]]:
        response = self.client.get(f"/api/v1/embeddings/dlq/{stage}", params={"limit": 100})
        assert response.status_code == 200, response.text
        return list(response.json()["data"])


def run_burst(settings: Settings) -> None:
    async def main() -> None:
        context, close = await build_worker_context(settings, preload=False)
        client = aioredis.Redis.from_url(settings.pipeline_config().redis_url)
        try:
            config = WorkerConfig.from_pipeline(settings.pipeline_config(), burst=True)
            await StageWorker(config, context, client).run()
        finally:
            await client.aclose()
            await close()

    asyncio.run(main())


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(widths={"text-embedding-3-small": 1536}) as server:
        yield server


def ops_settings(tmp_path: Path, redis_url: str, dsn: str, tiktoken_dir: Path, fake: FakeOpenAIServer,
                 **overrides: Any) -> Settings:
    """Redis pipeline (a unique key prefix), pgvector, the fake as the `openai` provider; users
    `bob` (plain) and `root` (admin)."""
    return make_settings(
        tmp_path, tiktoken_dir, api_keys_file=write_keys_file(tmp_path, {"bob": USER_KEY}, {"root": ROOT_KEY}),
        embeddings_pipeline="redis", redis_url=redis_url, embeddings_stream_prefix=f"test:{uuid.uuid4().hex}:",
        rag={"vector_store_type": "pgvector", "pgvector": {"dsn": dsn}}, openai_base_url=fake.base_url,
        openai_api_key="sk-upstream-key-0123456789", embeddings_max_retries=0, embeddings_retry_base_delay=0.01,
        auto_download_models=False, **overrides)


@contextmanager
def ops_for(tmp_path: Path, redis_url: str, dsn: str, tiktoken_dir: Path, fake: FakeOpenAIServer,
            **overrides: Any) -> Iterator[Ops]:
    settings = ops_settings(tmp_path, redis_url, dsn, tiktoken_dir, fake, **overrides)
    prefix = settings.embeddings_stream_prefix
    fake.reset()
    client = redis.Redis.from_url(redis_url)
    with TestClient(create_app(settings), headers=ADMIN) as test_client:
        yield Ops(test_client, settings, fake, StreamNames(prefix), client)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


@pytest.fixture
def ops(tmp_path: Path, redis_url: str, pg_database: str, tiktoken_dir: Path, fake: FakeOpenAIServer) -> Iterator[Ops]:
    with ops_for(tmp_path, redis_url, pg_database, tiktoken_dir, fake) as running:
        yield running


def vectors_of(ops: Ops, media_id: int) -> int:
    status = ops.client.get(f"/api/v1/media/{media_id}/embeddings/status")
    assert status.status_code == 200, status.text
    return int(status.json()["chunk_count"])


def embedded_inputs(fake: FakeOpenAIServer) -> int:
    return sum(len(r.body["input"]) for r in fake.requests if r.path.endswith("/embeddings") and r.body)


# --- dead letters -------------------------------------------------------------------------------


def test_poison_message_is_approved_requeued_after_the_fix_and_completes_once(ops: Ops) -> None:
    ops.fake.fail_next("status", status=400, times=1000)     # the provider rejects this text: permanent
    media = ops.upload()
    job_id = media["job_id"]
    ops.work()
    assert ops.job(job_id)["status"] == "failed"

    stats = ops.client.get("/api/v1/embeddings/dlq/stats").json()
    embedding = next(s for s in stats["stages"] if s["stage"] == "embedding")
    assert embedding["depth"] == 1 and embedding["by_error"] == {"upstream_rejected_request": 1}, stats
    [letter] = ops.dlq()
    assert letter["job_id"] == job_id and letter["state"] == "quarantined" and "payload" not in letter
    full = ops.client.get(f"/api/v1/embeddings/dlq/embedding/{letter['id']}").json()
    assert "Dead letters hold" in full["payload"]

    refused = ops.client.post("/api/v1/embeddings/dlq/embedding/requeue", json={"ids": [letter["id"]]})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "dlq_not_approved", refused.text
    no_note = ops.client.post(f"/api/v1/embeddings/dlq/embedding/{letter['id']}/state",
                              json={"state": "approved_for_requeue"})
    assert no_note.status_code == 400 and no_note.json()["error"]["param"] == "note", no_note.text
    approved = ops.client.post(f"/api/v1/embeddings/dlq/embedding/{letter['id']}/state",
                               json={"state": "approved_for_requeue", "note": "provider fixed"})
    assert approved.status_code == 200 and approved.json()["state"] == "approved_for_requeue", approved.text

    ops.fake.reset()                                          # the fix
    requeued = ops.client.post("/api/v1/embeddings/dlq/embedding/requeue", json={"ids": [letter["id"]]})
    assert requeued.status_code == 200, requeued.text
    assert requeued.json()["data"][0]["outcome"] == "requeued"
    assert ops.job(job_id)["status"] == "queued" and ops.job(job_id)["error"] is None
    ops.work()
    job = ops.job(job_id)
    assert job["status"] == "completed" and job["stored_chunks"] == job["total_chunks"] > 0, job
    assert vectors_of(ops, media["media_id"]) == job["total_chunks"]
    calls = embedded_inputs(ops.fake)
    assert calls == job["total_chunks"]

    # Requeued again (approved again): the job is complete, nothing is embedded or stored twice.
    ops.client.post(f"/api/v1/embeddings/dlq/embedding/{letter['id']}/state",
                    json={"state": "approved_for_requeue", "note": "again"})
    again = ops.client.post("/api/v1/embeddings/dlq/embedding/requeue", json={"ids": [letter["id"]]})
    assert again.status_code == 200 and again.json()["data"][0]["outcome"] == "skipped", again.text
    ops.work()
    assert embedded_inputs(ops.fake) == calls and vectors_of(ops, media["media_id"]) == job["total_chunks"]
    assert ops.job(job_id)["status"] == "completed"

    # Ignore and purge.
    ops.client.post(f"/api/v1/embeddings/dlq/embedding/{letter['id']}/state", json={"state": "ignored"})
    purged = ops.client.post("/api/v1/embeddings/dlq/embedding/purge")
    assert purged.json()["purged"] == 1 and ops.dlq() == []

    states = ops.audit("dlq.state")
    assert [e["outcome"] for e in reversed(states)] == ["invalid_value", "ok", "ok", "ok"], states
    assert [e["outcome"] for e in reversed(ops.audit("dlq.requeue"))] == ["dlq_not_approved", "ok", "ok"]
    assert states[0]["user_id"] == "root" and states[0]["target"] == f"stage=embedding,letter_id={letter['id']}"


def test_dead_letter_payloads_are_encrypted_at_rest_and_old_keys_still_decrypt(
    tmp_path: Path, redis_url: str, pg_database: str, tiktoken_dir: Path, fake: FakeOpenAIServer,
) -> None:
    old = generate_key_entry()
    with ops_for(tmp_path, redis_url, pg_database, tiktoken_dir, fake, embeddings_dlq_encryption_key=old) as ops:
        payload = '{"schema_version": 4, "stage": "embedding", "secret": "' + MARKER + '"}'
        ops.redis.xadd(ops.names.stream("embedding"), {"job": "job_x", "stage": "embedding", "data": payload})
        ops.work()
        dlq = ops.names.dlq("embedding")
        raw = subprocess.run(["redis-cli", "-u", ops.settings.pipeline_config().redis_url, "XRANGE", dlq, "-", "+"],
                             capture_output=True, text=True, check=True).stdout
        assert "enc:v1:" in raw and MARKER not in raw, raw
        [letter] = ops.dlq()
        assert letter["encrypted"] and letter["code"] == "invalid_message"
        full = ops.client.get(f"/api/v1/embeddings/dlq/embedding/{letter['id']}")
        assert full.status_code == 200 and MARKER in full.json()["payload"], full.text

        rotated = f"{generate_key_entry()},{old}"                                 # new first, old kept
        assert MARKER in asyncio.run(read_letter(ops, letter["id"], rotated))
        with pytest.raises(DLQDecryptError):
            asyncio.run(read_letter(ops, letter["id"], generate_key_entry()))     # the old key dropped


async def read_letter(ops: Ops, letter_id: str, setting: str) -> str:
    client = aioredis.Redis.from_url(ops.settings.pipeline_config().redis_url)
    try:
        queue = DeadLetterQueue(client, ops.names, DLQCrypto.from_setting(setting))
        return (await queue.get("embedding", letter_id)).payload or ""
    finally:
        await client.aclose()


def test_signed_pipeline_runs_and_tampered_or_stale_messages_are_dead_lettered(
    tmp_path: Path, redis_url: str, pg_database: str, tiktoken_dir: Path, fake: FakeOpenAIServer,
) -> None:
    with ops_for(tmp_path, redis_url, pg_database, tiktoken_dir, fake, embeddings_signing_secret=SECRET) as ops:
        ops.fake.fail_next("500")              # one transient failure: the retry waits in the delayed set
        media = ops.upload()
        job_id = media["job_id"]
        [(_, fields)] = ops.redis.xrange(ops.names.stream("chunking"))
        assert fields[b"sig"] and fields[b"ts"]
        ops.work()
        assert ops.job(job_id)["status"] == "completed"          # valid signatures are processed,
        assert len(ops.fake.requests) >= 2                        # a retried message's too (re-signed)
        before = embedded_inputs(ops.fake)

        signer = MessageSigner(SECRET)
        stale_signer = MessageSigner(SECRET, clock=lambda: time.time() - 10 * 86_400)
        base = {k.decode(): v for k, v in fields.items() if k in (b"job", b"stage", b"data")}
        tampered = {**base, **signer.sign(base), "data": base["data"].replace(b'"normal"', b'"high"')}
        stale = {**base, **stale_signer.sign(base)}
        unsigned = dict(base)
        for entry in (tampered, stale, unsigned):
            ops.redis.xadd(ops.names.stream("chunking"), entry)
        ops.work()
        letters = ops.dlq("chunking")
        assert [letter["code"] for letter in letters] == ["bad_signature"] * 3, letters
        assert {letter["error"].split(":")[0] for letter in letters} == {"BadSignature"}
        assert embedded_inputs(ops.fake) == before                # none of them was processed
        assert ops.job(job_id)["status"] == "completed"           # and the job was not touched

        # A priority bump moves the job's signed entry and never re-signs a forged one.
        waiting = ops.upload("A second document waits for its workers.")
        queued = ops.redis.xrange(ops.names.stream("chunking"))
        [(_, signed)] = [(i, f) for i, f in queued if f[b"job"].decode() == waiting["job_id"]]
        ops.redis.xadd(ops.names.stream("chunking"), {"job": waiting["job_id"], "stage": "chunking",
                                                     "data": signed[b"data"]})          # unsigned copy
        bumped = ops.client.post(f"/api/v1/embeddings/jobs/{waiting['job_id']}/priority", json={"priority": "high"})
        assert bumped.status_code == 200 and bumped.json()["moved_messages"] == 1, bumped.text
        [(_, moved)] = ops.redis.xrange(ops.names.stream("chunking", "high"))
        signer.verify(moved)                                       # re-signed: valid
        [(_, left)] = ops.redis.xrange(ops.names.stream("chunking"))
        assert b"sig" not in left                                  # the forged one stayed where it was


def test_reembed_on_the_redis_pipeline_embeds_only_the_changed_chunk(ops: Ops) -> None:
    paragraphs = [f"Paragraph {i} is about harbour number {i} and its cranes." for i in range(6)]
    options = {"chunk_method": "paragraphs", "chunk_size": 1, "chunk_overlap": 0}
    media = ops.upload("\n\n".join(paragraphs), **options)
    ops.work()
    assert ops.job(media["job_id"])["status"] == "completed" and embedded_inputs(ops.fake) == 6
    paragraphs[2] = "Paragraph 2 changed: the harbour closed in winter."
    edited = ops.client.patch(f"/api/v1/media/{media['media_id']}",
                              json={"content": "\n\n".join(paragraphs), "embedding_model": MODEL, **options})
    assert edited.status_code == 200, edited.text
    ops.work()
    job = ops.job(edited.json()["job_id"])
    assert (job["status"], job["embedded_chunks"], job["skipped_chunks"]) == ("completed", 1, 5), job
    assert embedded_inputs(ops.fake) == 7 and vectors_of(ops, media["media_id"]) == 6


def test_vector_store_files_run_on_the_redis_pipeline_and_a_batch_cancels(ops: Ops) -> None:
    def upload(name: str, text: str) -> str:
        response = ops.client.post("/v1/files", files={"file": (name, text.encode())}, data={"purpose": "assistants"})
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    store = ops.client.post("/v1/vector_stores", json={"name": "s", "embedding_model": MODEL}).json()["id"]
    attached = ops.client.post(f"/v1/vector_stores/{store}/files",
                               json={"file_id": upload("tides.txt", "Tides follow the moon around the bay.")})
    assert attached.status_code == 200 and attached.json()["status"] == "in_progress", attached.text
    ops.work()                                                   # the Redis workers run its job
    assert ops.client.get(f"/v1/vector_stores/{store}/files/{attached.json()['id']}").json()["status"] == "completed"
    hits = ops.client.post(f"/v1/vector_stores/{store}/search", json={"query": "Tides follow the moon around the bay."})
    assert hits.json()["data"][0]["filename"] == "tides.txt", hits.text

    batch = ops.client.post(f"/v1/vector_stores/{store}/file_batches",
                            json={"file_ids": [upload("a.txt", "One."), upload("b.txt", "Two.")]}).json()
    assert batch["status"] == "in_progress" and batch["file_counts"]["in_progress"] == 2, batch
    cancelled = ops.client.post(f"/v1/vector_stores/{store}/file_batches/{batch['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["file_counts"]["cancelled"] == 2, cancelled
    ops.work()                                                   # the cancelled jobs' messages are dropped
    listed = ops.client.get(f"/v1/vector_stores/{store}/file_batches/{batch['id']}/files").json()["data"]
    assert {f["status"] for f in listed} == {"cancelled"}
    counts = ops.client.get(f"/v1/vector_stores/{store}").json()["file_counts"]
    assert (counts["completed"], counts["cancelled"], counts["total"]) == (1, 2, 3), counts


# --- jobs and processes -------------------------------------------------------------------------


def test_skip_priority_and_idempotency_lookup(ops: Ops) -> None:
    media = ops.upload()
    job_id = media["job_id"]
    assert ops.redis.xlen(ops.names.stream("chunking")) == 1
    bumped = ops.client.post(f"/api/v1/embeddings/jobs/{job_id}/priority", json={"priority": "high"})
    assert bumped.status_code == 200 and bumped.json()["moved_messages"] == 1, bumped.text
    assert ops.redis.xlen(ops.names.stream("chunking")) == 0
    assert ops.redis.xlen(ops.names.stream("chunking", "high")) == 1
    job = ops.job(job_id)
    assert job["priority"] == "high"

    ledger = ops.client.get(f"/api/v1/embeddings/idempotency/{job['idempotency_key']}")
    assert ledger.status_code == 200 and [j["job_id"] for j in ledger.json()["data"]] == [job_id], ledger.text
    assert ops.client.get("/api/v1/embeddings/idempotency/nope").status_code == 404

    skipped = ops.client.post(f"/api/v1/embeddings/jobs/{job_id}/skip")
    assert skipped.status_code == 200 and skipped.json()["status"] == "cancelled", skipped.text
    ops.work()
    assert ops.job(job_id)["status"] == "cancelled" and embedded_inputs(ops.fake) == 0
    assert ops.client.post(f"/api/v1/embeddings/jobs/{job_id}/priority", json={"priority": "low"}).status_code == 409


def test_a_breaker_reset_reaches_the_worker_processes(ops: Ops) -> None:
    async def scenario() -> None:
        context, close = await build_worker_context(ops.settings, preload=False)
        client = aioredis.Redis.from_url(ops.settings.pipeline_config().redis_url)
        try:
            worker = StageWorker(WorkerConfig.from_pipeline(ops.settings.pipeline_config()), context, client)
            await worker._follow_operator()                       # its baseline
            breakers = context.embed._embeddings._executor.breakers  # type: ignore[attr-defined]
            breaker = breakers.get("openai")
            for _ in range(20):
                breaker.record_failure()
            assert breakers.snapshot()["openai"]["state"] == "open"
            response = await asyncio.to_thread(ops.client.post, "/api/v1/embeddings/circuit-breakers/openai/reset")
            assert response.status_code == 200, response.text
            worker._last_control = 0.0
            await worker._follow_operator()
            assert breakers.snapshot()["openai"]["state"] == "closed"
        finally:
            await client.aclose()
            await close()

    asyncio.run(scenario())


# --- the admin boundary ---------------------------------------------------------------------------


def _calls(route_params: dict[str, str]) -> dict[tuple[str, str], dict[str, Any]]:
    """One call per state-changing admin route (path template, method) -> request kwargs."""
    return {
        ("/api/v1/embeddings/models/warmup", "POST"): {"json": {"model": "huggingface:no-such/model"}},
        ("/api/v1/embeddings/models/download", "POST"): {"json": {"model": "huggingface:no-such/model"}},
        ("/api/v1/embeddings/cache", "DELETE"): {},
        ("/api/v1/embeddings/circuit-breakers/{provider}/reset", "POST"): {},
        ("/api/v1/embeddings/orchestrator/stages/{stage}/{action}", "POST"): {},
        ("/api/v1/embeddings/dlq/{stage}/requeue", "POST"): {"json": {"ids": ["1-1"]}},
        ("/api/v1/embeddings/dlq/{stage}/purge", "POST"): {},
        ("/api/v1/embeddings/dlq/{stage}/{letter_id}/state", "POST"): {"json": {"state": "ignored"}},
        ("/api/v1/embeddings/jobs/{job_id}/skip", "POST"): {},
        ("/api/v1/embeddings/jobs/{job_id}/priority", "POST"): {"json": {"priority": "high"}},
        ("/api/v1/embeddings/reembed/schedule", "POST"): {"json": {"user_id": "nobody"}},
        ("/api/v1/embeddings/compactor/run", "POST"): {},
        ("/api/v1/embeddings/dlq/{stage}/{letter_id}", "GET"): {},
    }


PATH_VALUES = {"provider": "openai", "stage": "embedding", "action": "resume", "letter_id": "1-1",
               "job_id": "job_missing", "key": "k", "model_id": "m", "media_id": "1", "store_id": "vs_x",
               "batch_id": "b", "vector_id": "v"}


def _admin_routes(app: Any) -> list[tuple[APIRoute, str, bool]]:
    found = []
    for route in api_routes(list(app.routes)):
        calls = {d.call for d in _walk(route.dependant)}
        if require_admin in calls or audited_admin in calls:
            for method in sorted(route.methods):
                found.append((route, method, audited_admin in calls))
    return found


def _walk(dependant: Any) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub
        yield from _walk(sub)


def test_every_admin_route_refuses_users_and_every_action_is_audited_once(ops: Ops) -> None:
    routes = _admin_routes(ops.client.app)
    assert len(routes) >= 15
    for route, method, _ in routes:
        path = route.path.format(**PATH_VALUES)
        response = ops.client.request(method, path, headers=USER, json={} if method == "POST" else None)
        assert response.status_code == 403, (method, route.path, response.text)
        assert ops.client.request(method, path, headers={"Authorization": ""}).status_code == 401

    changing = {(route.path, method) for route, method, _ in routes if method != "GET"}
    audited = {(route.path, method) for route, method, is_audited in routes if is_audited}
    assert changing <= audited, changing - audited                # no state-changing admin route unaudited
    assert audited - changing == {("/api/v1/embeddings/dlq/{stage}/{letter_id}", "GET")}   # payload reads too
    calls = _calls(PATH_VALUES)
    assert set(calls) == audited, set(calls) ^ audited            # this table covers every one of them
    for (template, method), kwargs in calls.items():
        before = ops.client.get("/api/v1/embeddings/audit", params={"limit": 100}).json()["data"]
        ops.client.request(method, template.format(**PATH_VALUES), **kwargs)
        after = ops.client.get("/api/v1/embeddings/audit", params={"limit": 100}).json()["data"]
        assert len(after) == len(before) + 1, (template, method)
        assert after[0]["user_id"] == "root" and after[0]["action"] and after[0]["outcome"], after[0]
    actions = {e["action"] for e in ops.client.get("/api/v1/embeddings/audit", params={"limit": 100}).json()["data"]}
    assert {"cache.clear", "breaker.reset", "stage.resume", "dlq.purge", "job.skip", "reembed.schedule",
            "compactor.run"} <= actions, actions
    only = ops.client.get("/api/v1/embeddings/audit", params={"action": "cache.clear"}).json()["data"]
    assert [e["action"] for e in only] == ["cache.clear"]
    assert ops.client.get("/api/v1/embeddings/audit", params={"user_id": "bob"}).json()["data"] == []


# --- the operator's command line -----------------------------------------------------------------


def ops_cli(server: LiveServer, *args: str, key: str = ROOT_KEY) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TLDW_BASE_URL": server.base_url, "TLDW_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "tldw_Server_API.ops", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_ops_command_line_runs_the_dlq_and_reembed_tools(
    tmp_path: Path, redis_url: str, pg_database: str, tiktoken_dir: Path, fake: FakeOpenAIServer,
) -> None:
    settings = ops_settings(tmp_path, redis_url, pg_database, tiktoken_dir, fake)
    names = StreamNames(settings.embeddings_stream_prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        with LiveServer(settings) as server:
            client.xadd(names.stream("embedding"), {"job": "job_x", "stage": "embedding", "data": b"{nope"})
            run_burst(settings)
            stats = ops_cli(server, "dlq", "stats")
            assert stats.returncode == 0, stats.stderr
            assert next(s for s in json.loads(stats.stdout)["stages"] if s["stage"] == "embedding")["depth"] == 1
            [letter] = json.loads(ops_cli(server, "dlq", "list", "embedding").stdout)["data"]
            shown = json.loads(ops_cli(server, "dlq", "show", "embedding", letter["id"]).stdout)
            assert shown["payload"] == "{nope"
            assert ops_cli(server, "dlq", "approve", "embedding", letter["id"]).returncode == 2   # --note required
            refused = ops_cli(server, "dlq", "requeue", "embedding", letter["id"])
            assert refused.returncode == 1 and "dlq_not_approved" in refused.stderr, refused.stderr
            approved = ops_cli(server, "dlq", "approve", "embedding", letter["id"], "--note", "checked")
            assert approved.returncode == 0 and json.loads(approved.stdout)["state"] == "approved_for_requeue"
            requeued = json.loads(ops_cli(server, "dlq", "requeue", "embedding", letter["id"]).stdout)
            assert requeued["data"][0]["outcome"] == "skipped"           # it named no job
            assert ops_cli(server, "dlq", "ignore", "embedding", letter["id"]).returncode == 0
            assert json.loads(ops_cli(server, "dlq", "purge", "embedding").stdout)["purged"] == 1

            added = httpx.post(f"{server.base_url}/api/v1/media/add", headers={"Authorization": f"Bearer {USER_KEY}"},
                               json={"title": "t", "content": "One paragraph.\n\nTwo.", "embedding_model": MODEL})
            assert added.status_code == 201, added.text
            run_burst(settings)
            reembed = ops_cli(server, "reembed", "--user", "bob")
            assert reembed.returncode == 0, reembed.stderr
            assert len(json.loads(reembed.stdout)["job_ids"]) == 1
            assert json.loads(ops_cli(server, "compact").stdout)["removed_vectors"] == 0
            audit = json.loads(ops_cli(server, "audit", "--action", "dlq.purge").stdout)["data"]
            assert [(e["action"], e["user_id"]) for e in audit] == [("dlq.purge", "root")]
            denied = ops_cli(server, "dlq", "stats", key=USER_KEY)
            assert denied.returncode == 1 and "403" in denied.stderr
            assert ops_cli(server, "reembed", "--user", "nobody").returncode == 1
    finally:
        for key in client.scan_iter(match=f"{settings.embeddings_stream_prefix}*"):
            client.delete(key)
        client.close()
