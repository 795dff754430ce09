"""The Redis Streams pipeline end to end: the server enqueues (`EMBEDDINGS_PIPELINE=redis`), real
worker processes (`workers/base_worker.py --stage ...`) run the stages, pgvector holds the vectors
and every process shares the jobs DB. Real Redis, a unique key prefix per test, a fresh database.

- 20 documents complete and are found, with an embedding worker and then a storage worker
  SIGKILLed while they hold pending messages: other workers reclaim them after the lease; every
  chunk is stored exactly once (vectors per media = the job's total = its stored count); nothing
  stays pending; the admin summary shows the DLQ entry and only the live workers.
- A payload that does not decode goes to the stage's DLQ with its reason; the workers go on.
- A storage worker SIGKILLed after its store write and before its ack (Redis paused for writes in
  between): the entry is reclaimed and stored again by id, nothing twice.
- The same pipeline on a Chroma server (`RAG__CHROMA__URL`) instead of pgvector.
- Redis loses every pipeline key mid-run: the reconciler re-enqueues from the jobs DB and every
  job completes, nothing duplicated; the orchestrator runs one process per stage, each naming its
  stage on its command line, and restarts one that was killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.support import ADMIN_KEY, LiveServer, make_settings, real_texts
from tldw_Server_API.app.core.Embeddings.worker_config import StreamNames

LEASE = 2.0
TERMINAL = {"completed", "failed", "cancelled"}


def document(i: int, words: int) -> str:
    pool = " ".join(real_texts()).split()
    start = 2000 + i * words
    return f"Document number {i} is about the subject zeta{i}. " + " ".join(pool[start:start + words])


@dataclass
class Pipeline:
    server: LiveServer
    env: dict[str, str]
    names: StreamNames
    redis: redis.Redis
    client: httpx.Client
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def worker(self, stage: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-m", "tldw_Server_API.app.core.Embeddings.workers.base_worker",
                                    "--stage", stage], env=self.env)
        self.workers.append(process)
        return process

    def upload(self, text: str, title: str) -> dict[str, Any]:
        response = self.client.post("/api/v1/media/add", json={"title": title, "content": text})
        assert response.status_code == 201, response.text
        return dict(response.json())

    def jobs(self) -> list[dict[str, Any]]:
        response = self.client.get("/api/v1/media/embeddings/jobs", params={"limit": 100})
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    def wait_done(self, count: int, timeout: float = 240) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            if len(jobs) == count and all(j["status"] in TERMINAL for j in jobs):
                return jobs
            for process in self.workers:
                assert process.poll() in (None, -signal.SIGKILL), "a worker exited on its own"
            assert time.monotonic() < deadline, [(j["status"], j["stored_chunks"], j["total_chunks"]) for j in jobs]
            time.sleep(0.3)

    def settled(self, timeout: float = 30) -> bool:
        """Nothing pending in any stage once the last acks land (a job completes, by design, before
        the ack of the message that completed it: its state is written before `XACK`)."""
        deadline = time.monotonic() + timeout
        while any(self.pending(stage) for stage in ("chunking", "embedding", "storage")):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def pending(self, stage: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for stream in self.names.streams(stage):
            if self.redis.exists(stream):
                rows += self.redis.xpending_range(stream, self.names.group(stage), min="-", max="+", count=1000)
        return rows

    def assert_exactly_once(self, jobs: list[dict[str, Any]]) -> None:
        assert {j["status"] for j in jobs} == {"completed"}, jobs
        for job in jobs:
            status = self.client.get(f"/api/v1/media/{job['media_id']}/embeddings/status").json()
            assert status["chunk_count"] == job["total_chunks"] == job["stored_chunks"] > 0, (status, job)
            assert job["processed_chunks"] == job["total_chunks"], job


@pytest.fixture
def pipeline(tmp_path: Path, redis_url: str, pg_database: str, tiktoken_dir: Path) -> Iterator[Pipeline]:
    rag_env = {"RAG__VECTOR_STORE_TYPE": "pgvector", "RAG__PGVECTOR__DSN": pg_database}
    rag = {"vector_store_type": "pgvector", "pgvector": {"dsn": pg_database}}
    yield from run_pipeline(tmp_path, redis_url, tiktoken_dir, rag_env, rag)


@pytest.fixture
def chroma_pipeline(tmp_path: Path, redis_url: str, chroma_server_url: str, tiktoken_dir: Path) -> Iterator[Pipeline]:
    yield from run_pipeline(tmp_path, redis_url, tiktoken_dir, {"RAG__CHROMA__URL": chroma_server_url},
                            {"chroma": {"url": chroma_server_url}})


def run_pipeline(tmp_path: Path, redis_url: str, tiktoken_dir: Path, rag_env: dict[str, str],
                 rag: dict[str, Any]) -> Iterator[Pipeline]:
    """A live server enqueueing to Redis under a unique prefix, over the given shared vector
    store; workers are started by the test and stopped here."""
    prefix = f"test:{uuid.uuid4().hex}:"
    data = tmp_path / "data"
    env = {**os.environ, "TLDW_DATA_DIR": str(data), **rag_env, "EMBEDDINGS_PIPELINE": "redis", "REDIS_URL": redis_url,
           "EMBEDDINGS_STREAM_PREFIX": prefix, "EMBEDDINGS_WORKER_LEASE_SECONDS": str(LEASE),
           "TIKTOKEN_CACHE_DIR": str(tiktoken_dir), "LOG_LEVEL": "WARNING", "SINGLE_USER_API_KEY": ADMIN_KEY}
    settings = make_settings(data, tiktoken_dir, embeddings_pipeline="redis", redis_url=redis_url,
                             embeddings_stream_prefix=prefix, embeddings_worker_lease_seconds=LEASE, rag=rag)
    client = redis.Redis.from_url(redis_url)
    with LiveServer(settings) as server:
        http = httpx.Client(base_url=server.base_url, timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        running = Pipeline(server, env, StreamNames(prefix), client, http)
        try:
            yield running
        finally:
            for process in running.workers:
                if process.poll() is None:
                    process.terminate()
            for process in running.workers:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
            http.close()
            keys = list(client.scan_iter(match=f"{prefix}*"))
            if keys:
                client.delete(*keys)
            client.close()


def test_twenty_documents_complete_with_an_embedding_worker_killed_holding_messages(pipeline: Pipeline) -> None:
    pipeline.worker("chunking")
    storer = pipeline.worker("storage")
    pipeline.worker("storage")
    victim = pipeline.worker("embedding")
    pipeline.worker("embedding")
    docs = {pipeline.upload(document(i, 1500), f"doc {i}")["media_id"]: i for i in range(20)}
    for stage, process in (("embedding", victim), ("storage", storer)):   # SIGKILL each while it holds a message
        deadline = time.monotonic() + 120
        while not any(f"-{process.pid}-" in str(row["consumer"]) for row in pipeline.pending(stage)):
            assert time.monotonic() < deadline, f"the {stage} victim never held a message"
            assert not all(j["status"] in TERMINAL for j in pipeline.jobs()), "everything finished first"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    jobs = pipeline.wait_done(len(docs))
    pipeline.assert_exactly_once(jobs)
    assert pipeline.settled()
    for media_id, i in docs.items():
        query = " ".join(document(i, 1500).split()[400:416])   # a passage from the middle of it
        response = pipeline.client.post("/api/v1/rag/search", json={"query": query, "mode": "hybrid", "top_k": 3})
        assert response.status_code == 200, response.text
        assert media_id in [hit["media_id"] for hit in response.json()["data"]], (i, response.json())

    # A payload that does not decode: dead-lettered with its reason, and the workers go on.
    pipeline.redis.xadd(pipeline.names.stream("embedding"), {"job": "job_x", "stage": "embedding", "data": b"{nope"})
    deadline = time.monotonic() + 30
    while not pipeline.redis.xlen(pipeline.names.dlq("embedding")):
        assert time.monotonic() < deadline, "the poison message was not dead-lettered"
        time.sleep(0.1)
    (_, entry), = pipeline.redis.xrange(pipeline.names.dlq("embedding"))
    assert entry[b"code"] == b"invalid_message" and b"not valid JSON" in entry[b"error"], entry
    pipeline.upload(document(40, 300), "after the poison")
    pipeline.assert_exactly_once(pipeline.wait_done(len(docs) + 1))
    summary = pipeline.client.get("/api/v1/embeddings/orchestrator/summary").json()
    stages = {s["stage"]: s for s in summary["stages"]}
    assert summary["mode"] == "redis" and stages["embedding"]["dlq_depth"] == 1, summary
    assert stages["embedding"]["workers"] == 1 and stages["storage"]["workers"] == 1, summary   # the killed are gone
    assert all(s["backlog"] == 0 for s in stages.values()), summary


def test_a_storage_worker_killed_between_its_store_write_and_its_ack_stores_nothing_twice(
    pipeline: Pipeline,
) -> None:
    """Redis is paused for writes (`CLIENT PAUSE WRITE`) right after the victim took a storage
    entry: it writes the vectors, then blocks on its ack. Once the entry's vectors are in the
    store and the entry is still pending, the victim is SIGKILLed; another worker reclaims the
    entry after the lease and upserts the same ids again."""
    from tldw_Server_API.app.core.Embeddings.messages import from_fields
    from tldw_Server_API.app.core.Embeddings.queue_schemas import StorageMessage

    pipeline.worker("chunking")
    pipeline.worker("embedding")
    victim = pipeline.worker("storage")
    docs = [pipeline.upload(document(i, 1500), f"doc {i}")["media_id"] for i in range(6)]
    app = pipeline.server.server.config.app
    store = app.state.services.storage.vector_stores.for_user("single_user")

    def stored(ids: list[str]) -> int:
        return sum(len(store.get(name, ids=ids)) for name in store.list_collections())

    caught = None
    deadline = time.monotonic() + 180
    while caught is None:
        assert time.monotonic() < deadline, "never caught the victim between its write and its ack"
        held = [row for row in pipeline.pending("storage") if f"-{victim.pid}-" in str(row["consumer"])]
        if not held:
            time.sleep(0.005)
            continue
        pipeline.redis.client_pause(10_000, all=False)     # writes (the ack) wait; reads go on
        try:
            entry_id = held[0]["message_id"]
            (stream,) = [s for s in pipeline.names.streams("storage")
                         if pipeline.redis.xrange(s, min=entry_id, max=entry_id)]
            message = from_fields(pipeline.redis.xrange(stream, min=entry_id, max=entry_id)[0][1])
            assert isinstance(message, StorageMessage)
            written_by = time.monotonic() + 5
            while stored(message.chunk_ids) < len(message.chunk_ids) and time.monotonic() < written_by:
                time.sleep(0.05)
            still_pending = any(row["message_id"] == entry_id for row in pipeline.pending("storage"))
            if still_pending and stored(message.chunk_ids) == len(message.chunk_ids):
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=30)
                caught = entry_id
        finally:
            pipeline.redis.client_unpause()
    assert any(row["message_id"] == caught for row in pipeline.pending("storage"))   # written, never acked
    pipeline.worker("storage")
    jobs = pipeline.wait_done(len(docs))
    pipeline.assert_exactly_once(jobs)
    assert pipeline.settled()


def test_the_pipeline_runs_on_a_chroma_server(chroma_pipeline: Pipeline) -> None:
    """Client/server Chroma (`RAG__CHROMA__URL`) is shared state the worker processes reach."""
    chroma_pipeline.worker("all")
    docs = {chroma_pipeline.upload(document(i, 600), f"doc {i}")["media_id"]: i for i in range(4)}
    chroma_pipeline.assert_exactly_once(chroma_pipeline.wait_done(len(docs)))
    for media_id, i in docs.items():
        query = " ".join(document(i, 600).split()[200:216])
        response = chroma_pipeline.client.post("/api/v1/rag/search", json={"query": query, "top_k": 3})
        assert response.status_code == 200, response.text
        assert media_id in [hit["media_id"] for hit in response.json()["data"]], (i, response.json())


def test_redis_losing_its_data_mid_run_is_healed_by_the_reconciler(pipeline: Pipeline) -> None:
    import asyncio

    import redis.asyncio as aioredis

    from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDBFactory
    from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobsDB
    from tldw_Server_API.app.core.Embeddings.workers.base_worker import ensure_groups
    from tldw_Server_API.app.core.Embeddings.workers.redis_executor import reconcile

    for i in range(6):   # enqueued with no worker running yet
        pipeline.upload(document(i, 800), f"doc {i}")
    keys = list(pipeline.redis.scan_iter(match=f"{pipeline.names.prefix}*"))
    pipeline.redis.delete(*keys)            # Redis restarted empty / flushed

    storage = pipeline.server.settings.storage_config()

    async def heal() -> int:
        client = aioredis.Redis.from_url(pipeline.env["REDIS_URL"])
        try:
            await ensure_groups(client, pipeline.names, ("chunking", "embedding", "storage"))
            return await reconcile(client, pipeline.names, JobsDB(storage.jobs_db_url),
                                   MediaDBFactory(storage.data_dir), grace_seconds=0)
        finally:
            await client.aclose()

    assert asyncio.run(heal()) == 6
    assert asyncio.run(heal()) == 0          # each job has its message now: nothing enqueued twice

    # The orchestrator runs a pool per stage (each process names its stage) and restarts the dead.
    orchestrator = subprocess.Popen([sys.executable, "-m", "tldw_Server_API.app.core.Embeddings.worker_orchestrator",
                                     "--stage", "all", "--interval", "0.5"], env=pipeline.env)
    pipeline.workers.append(orchestrator)
    deadline = time.monotonic() + 60
    while len(children := _children(orchestrator.pid)) < 3:
        assert time.monotonic() < deadline, children
        time.sleep(0.2)
    assert sorted(args.split("--stage ")[1] for args in children.values()) == ["chunking", "embedding", "storage"]
    os.kill(next(pid for pid, args in children.items() if args.endswith("storage")), signal.SIGKILL)
    pipeline.assert_exactly_once(pipeline.wait_done(6))
    deadline = time.monotonic() + 30
    while True:
        raw = pipeline.redis.get(f"{pipeline.names.prefix}embeddings:orchestrator:summary")
        report = json.loads(raw)["stages"] if raw else {}
        if report and report["storage"]["restarts"] == 1 and report["storage"]["processes"] == 1:
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.2)


def _children(pid: int) -> dict[int, str]:
    """The command lines of a process's children (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, ValueError, IndexError):
            continue
    return found
