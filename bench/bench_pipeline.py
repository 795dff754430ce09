"""The Redis Streams pipeline against the embedded executor (issue #14): the same documents
uploaded through `POST /api/v1/media/add` until every job is `completed`, run three ways in one
run, each on a fresh pgvector database:

- `embedded`: the server's own asyncio executor (no Redis);
- `redis_1`: `EMBEDDINGS_PIPELINE=redis`, the server only enqueues; one chunking, one storage and
  ONE embedding worker process (`workers/base_worker.py --stage ...`);
- `redis_2`: the same with TWO embedding worker processes.

Every model runs single-threaded (`EMBEDDINGS_ONNX_THREADS=1` / `EMBEDDINGS_TORCH_THREADS=1`), in
the server and in each worker, so a second embedding worker is a second core's worth of model.
Reported: chunks/s from the first upload to the last job completed; each run's ratio to the
engine's own single-threaded rate on exactly the same chunk texts (measured before and after the
runs; the faster is used); `redis_1 / embedded` (target >= 0.8) and `redis_2 / redis_1` (the
scaling factor, target >= 1.6, which needs two free cores beside the server, Redis and PostgreSQL).

    .venv/bin/python bench/bench_pipeline.py [--documents 60] [--model provider:model] [--out PATH]

Benchmark only: drives the server and workers as separate processes; changes no app code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg.conninfo import make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingestion import (  # noqa: E402
    build_documents,
    chunk_documents,
    describe_corpus,
    engine_rate,
    run_pipeline,
)
from harness import CpuSteal, ServerProcess, load_average, machine_info, pgvector_server, write_report  # noqa: E402

from tldw_Server_API.app.core.Chunking import ChunkingOptions  # noqa: E402
from tldw_Server_API.app.core.config import BUNDLED_MODEL_ID, Settings  # noqa: E402

DEFAULT_MODEL = f"onnx:{BUNDLED_MODEL_ID}@fp32"
TARGET_VS_EMBEDDED = 0.8
TARGET_SCALING = 1.6
WORKER = "tldw_Server_API.app.core.Embeddings.workers.base_worker"
SINGLE_THREAD = {"EMBEDDINGS_ONNX_THREADS": "1", "EMBEDDINGS_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}


def fresh_database(admin_dsn: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    return dsn


def wait_for_workers(client: redis.Redis, pattern: str, count: int, timeout_s: float = 300) -> None:
    """Until `count` workers have written their heartbeat (an embedding worker does so once its
    model is loaded, so the timed run starts with warm workers)."""
    deadline = time.monotonic() + timeout_s
    while len(list(client.scan_iter(match=pattern, count=500))) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(list(client.scan_iter(match=pattern)))} of {count} workers started")
        time.sleep(0.2)


async def run_mode(mode: str, embedding_workers: int, documents: list[str], form: dict[str, str], root: Path,
                   env: dict[str, str], admin_dsn: str, redis_url: str) -> dict[str, Any]:
    data = root / mode
    run_env = {**env, "RAG__VECTOR_STORE_TYPE": "pgvector", "RAG__PGVECTOR__DSN": fresh_database(admin_dsn)}
    workers: list[subprocess.Popen[bytes]] = []
    client = redis.Redis.from_url(redis_url)
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    if embedding_workers:
        run_env.update({"EMBEDDINGS_PIPELINE": "redis", "REDIS_URL": redis_url, "EMBEDDINGS_STREAM_PREFIX": prefix})
    try:
        with ServerProcess(data, run_env) as server:
            if embedding_workers:
                worker_env = {**server.env}
                stages = ["chunking", "storage", *["embedding"] * embedding_workers]
                workers = [subprocess.Popen([sys.executable, "-m", WORKER, "--stage", stage], env=worker_env)
                           for stage in stages]
                wait_for_workers(client, f"{prefix}embeddings:workers:*", len(stages))
            with CpuSteal() as steal:
                result = await run_pipeline(server, documents, form)
    finally:
        for process in workers:
            process.terminate()
        for process in workers:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(key)
        client.close()
    result.update({"mode": mode, "embedding_workers": embedding_workers, "cpu_steal_share": steal.share})
    print(f"  {mode}: {result['chunks']} chunks, {result['chunks_per_s']:.1f} chunks/s", flush=True)
    return result


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    options = ChunkingOptions("words", args.chunk_size, args.chunk_overlap)
    documents = build_documents(args.documents, 1, args.min_words, args.max_words)
    texts = chunk_documents(documents, options)
    form = {"chunk_method": "words", "chunk_size": str(args.chunk_size), "chunk_overlap": str(args.chunk_overlap),
            "embedding_model": args.model}
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    report: dict[str, Any] = {"machine": machine_info(), "model": args.model,
                              "corpus": describe_corpus(documents, texts, options), "threads_per_model": 1,
                              "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp, pgvector_server() as admin_dsn:
        root = Path(tmp)
        model_dir = root / "models"    # one ONNX export, shared by the reference, server and workers
        reference = Settings(tldw_data_dir=root / "reference", embeddings_model_dir=model_dir, log_level="WARNING",
                             embeddings_onnx_threads=1, embeddings_torch_threads=1)
        before = await engine_rate(args.model, texts, reference)
        print(f"  engine alone, 1 thread (before): {before['chunks_per_s']:.1f} chunks/s", flush=True)
        env = {**SINGLE_THREAD, "EMBEDDINGS_MODEL_DIR": str(model_dir), "PRELOAD_EMBEDDING_MODELS": args.model}
        for mode, workers in (("embedded", 0), ("redis_1", 1), ("redis_2", 2)):
            report["runs"][mode] = await run_mode(mode, workers, documents, form, root, env, admin_dsn, redis_url)
            if report["runs"][mode]["chunks"] != len(texts):
                raise RuntimeError(f"{mode}: the server made {report['runs'][mode]['chunks']} chunks, "
                                   f"the reference {len(texts)}")
        after = await engine_rate(args.model, texts, reference)
        print(f"  engine alone, 1 thread (after): {after['chunks_per_s']:.1f} chunks/s", flush=True)
    engine = max(before["chunks_per_s"], after["chunks_per_s"])
    runs = report["runs"]
    for run in runs.values():
        run["ratio_to_engine"] = run["chunks_per_s"] / engine
    vs_embedded = runs["redis_1"]["chunks_per_s"] / runs["embedded"]["chunks_per_s"]
    scaling = runs["redis_2"]["chunks_per_s"] / runs["redis_1"]["chunks_per_s"]
    report.update({
        "engine_before": before, "engine_after": after, "engine_chunks_per_s": engine,
        "redis_1_vs_embedded": vs_embedded, "target_redis_1_vs_embedded": TARGET_VS_EMBEDDED,
        "scaling_1_to_2_workers": scaling, "target_scaling": TARGET_SCALING,
        "passed": {"redis_1_vs_embedded": vs_embedded >= TARGET_VS_EMBEDDED, "scaling": scaling >= TARGET_SCALING},
        "load_average_at_end": load_average(),
    })
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=60)
    parser.add_argument("--min-words", type=int, default=300)
    parser.add_argument("--max-words", type=int, default=1500)
    parser.add_argument("--chunk-size", type=int, default=150, help="words per chunk")
    parser.add_argument("--chunk-overlap", type=int, default=30, help="words of overlap")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "pipeline.json")
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    write_report(args.out, report)
    runs = report["runs"]
    print(f"{report['corpus']['chunks']} chunks; engine alone (1 thread): {report['engine_chunks_per_s']:.1f} c/s")
    for mode, run in runs.items():
        print(f"  {mode:<9} {run['chunks_per_s']:>7.1f} c/s  {run['ratio_to_engine']:.2f}x engine  "
              f"steal {run['cpu_steal_share'] or 0:.1%}")
    print(f"redis_1 / embedded: {report['redis_1_vs_embedded']:.2f} (target >= {TARGET_VS_EMBEDDED}); "
          f"redis_2 / redis_1: {report['scaling_1_to_2_workers']:.2f} (target >= {TARGET_SCALING})")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
