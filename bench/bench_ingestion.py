"""Ingestion throughput (issue #4): 100 documents of real text uploaded at once through
`POST /api/v1/media/add` (multipart) until every embedding job is `completed`, in chunks/s from the
first upload sent to the last job completed, against the engine's own rate on exactly the same chunk
texts in the same run (`provider.embed` of all of them in one call). Target: >= 0.8x the engine.

    .venv/bin/python bench/bench_ingestion.py [--documents 100] [--model provider:model ...] [--out PATH]

Chunks are 150 words with 30 words of overlap: ~250 model tokens on this corpus, the model's
256-token window (kept from before issue #13, so results stay comparable). The reference runs
before and after the server; the ratio uses the faster of the two (the conservative one).
Benchmark only: drives the server over HTTP and the engine directly, changes no app code.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import build_corpus  # noqa: E402
from harness import ServerProcess, load_average, machine_info, write_report  # noqa: E402

from tldw_Server_API.app.core.Chunking import ChunkingOptions, chunk_text, extract_text  # noqa: E402
from tldw_Server_API.app.core.config import BUNDLED_MODEL_ID, Settings  # noqa: E402
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import (  # noqa: E402
    create_provider_registry,
)

TARGET_RATIO = 0.8
DEFAULT_MODELS = (BUNDLED_MODEL_ID, f"onnx:{BUNDLED_MODEL_ID}@fp32")   # the default (its engine choice), the old one
TERMINAL = {"completed", "failed", "cancelled"}


def build_documents(count: int, seed: int, min_words: int, max_words: int) -> list[str]:
    """Documents of `min_words`-`max_words` words: corpus passages joined as paragraphs."""
    passages = iter(build_corpus(count * max_words // 40 + 100, seed=seed))
    rnd = random.Random(seed)
    documents = []
    for _ in range(count):
        target, paragraphs, words = rnd.randint(min_words, max_words), [], 0
        while words < target:
            paragraph = next(passages).split()[:target - words]
            paragraphs.append(" ".join(paragraph))
            words += len(paragraph)
        documents.append("\n\n".join(paragraphs))
    return documents


def file_name(index: int) -> str:
    return f"bench-doc-{index:03d}.txt"


PASS_COUNTERS = ("batches_run", "rows_run", "tokens_run", "padded_tokens_run")


def pass_counters(batchers: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The micro-batchers' cumulative pass counters (`MicroBatcher.stats`), summed over models."""
    return {key: sum(int(stats.get(key) or 0) for stats in batchers.values()) for key in PASS_COUNTERS}


def pass_shapes(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """The passes run between two counter readings: how many, their rows and padded tokens, and the
    padding efficiency (real / padded tokens). The pipeline's passes are formed from whatever jobs
    have queued; the reference's from every chunk sorted at once."""
    d = {key: after[key] - before[key] for key in PASS_COUNTERS}
    passes = d["batches_run"]
    return {"passes": passes, "rows": d["rows_run"], "tokens": d["tokens_run"], "padded_tokens": d["padded_tokens_run"],
            "rows_per_pass": d["rows_run"] / passes if passes else None,
            "padded_tokens_per_pass": d["padded_tokens_run"] / passes if passes else None,
            "padding_efficiency": d["tokens_run"] / d["padded_tokens_run"] if d["padded_tokens_run"] else None}


def chunk_documents(documents: list[str], options: ChunkingOptions) -> list[str]:
    """The chunk texts the server will embed: the same extraction and chunking of the same bytes."""
    texts: list[str] = []
    for index, document in enumerate(documents):
        text = extract_text(file_name(index), "text/plain", document.encode()).text
        texts.extend(chunk.text for chunk in chunk_text(text, options))
    return texts


async def engine_rate(model: str, texts: list[str], settings: Settings) -> dict[str, Any]:
    """The engine alone: one `embed` call with every chunk (it length-sorts and cuts its own batches).
    A bare id runs on its engine choice, measured (or read back from the shared model dir) as the
    server does at start-up."""
    registry = create_provider_registry(settings.engine_config())
    try:
        if ":" not in model:
            await registry.measure_engines([model])
        resolved = registry.resolve(model)
        provider, model_id = resolved.provider, resolved.info.model_id
        await provider.embed(model_id, texts[:64])  # load and warm the model, not timed
        counters = pass_counters(provider.batcher_stats())
        start, cpu = time.perf_counter(), time.process_time()
        batch = await provider.embed(model_id, texts)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        passes = pass_shapes(counters, pass_counters(provider.batcher_stats()))
    finally:
        await registry.aclose()
    tokens = sum(batch.token_counts)
    return {"engine": resolved.info.engine, "seconds": seconds, "chunks_per_s": len(texts) / seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds, "cpu_seconds": cpu_seconds, "passes": passes}


async def upload(client: httpx.AsyncClient, index: int, document: str, form: dict[str, str]) -> dict[str, Any]:
    files = {"file": (file_name(index), document.encode(), "text/plain")}
    response = await client.post("/api/v1/media/add", files=files, data={"title": f"Bench {index}", **form})
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def count_jobs(client: httpx.AsyncClient, status: str) -> int:
    response = await client.get("/api/v1/media/embeddings/jobs", params={"status": status, "limit": 1})
    response.raise_for_status()
    return int(response.json()["total"])


async def wait_for_jobs(client: httpx.AsyncClient, job_ids: set[str], poll_s: float) -> dict[str, dict[str, Any]]:
    """Until every job is terminal, asking only for counts (cheap: polling must not slow the server
    down); then every job once, as the server reports it. The data dir holds these jobs only."""
    while sum([await count_jobs(client, status) for status in sorted(TERMINAL)]) < len(job_ids):
        await asyncio.sleep(poll_s)
    response = await client.get("/api/v1/media/embeddings/jobs", params={"limit": 500})
    response.raise_for_status()
    return {job["job_id"]: job for job in response.json()["items"] if job["job_id"] in job_ids}


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


async def server_pass_counters(client: httpx.AsyncClient) -> dict[str, int]:
    """The server's pass counters, from `GET /api/v1/embeddings/health` (every local provider)."""
    response = await client.get("/api/v1/embeddings/health")
    response.raise_for_status()
    providers = response.json().get("providers", {})
    batchers = {f"{name}:{model}": stats for name, health in providers.items() if isinstance(health, dict)
                for model, stats in (health.get("batchers") or {}).items()}
    return pass_counters(batchers)


async def run_pipeline(server: ServerProcess, documents: list[str], form: dict[str, str]) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=len(documents), max_keepalive_connections=len(documents))
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=600,
                                 limits=limits) as client:
        counters = await server_pass_counters(client)
        cpu_before, started = server.cpu_seconds(), time.time()
        added = await asyncio.gather(*(upload(client, i, d, form) for i, d in enumerate(documents)))
        uploaded = time.time()
        jobs = await wait_for_jobs(client, {a["job_id"] for a in added}, poll_s=0.5)
        detected, cpu_after = time.time(), server.cpu_seconds()
        passes = pass_shapes(counters, await server_pass_counters(client))
    failed = [job for job in jobs.values() if job["status"] != "completed"]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) did not complete, e.g. {failed[0]['status']}: {failed[0]['error']}")
    finished = max(_timestamp(job["completed_at"]) for job in jobs.values())
    chunks = sum(job["total_chunks"] for job in jobs.values())
    seconds = finished - started
    waits = [_timestamp(j["started_at"]) - _timestamp(j["created_at"]) for j in jobs.values()]
    runs = [_timestamp(j["completed_at"]) - _timestamp(j["started_at"]) for j in jobs.values()]
    return {
        "jobs": len(jobs), "chunks": chunks, "seconds": seconds, "chunks_per_s": chunks / seconds,
        "uploads_seconds": uploaded - started, "seconds_until_client_saw_all_completed": detected - started,
        "job_queue_wait_s": {"median": statistics.median(waits), "max": max(waits)},
        "job_run_s": {"median": statistics.median(runs), "max": max(runs)},
        "server_cpu_seconds": cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None,
        "passes": passes,
    }


async def bench_model(model: str, documents: list[str], texts: list[str], form: dict[str, str],
                      root: Path) -> dict[str, Any]:
    model_dir = root / "models"  # shared by the reference and the server (the ONNX export is cached there)
    reference_settings = Settings(tldw_data_dir=root / "reference", embeddings_model_dir=model_dir,
                                  log_level="WARNING")
    before = await engine_rate(model, texts, reference_settings)
    print(f"  engine alone (before): {before['chunks_per_s']:.1f} chunks/s", flush=True)
    env = {"EMBEDDINGS_MODEL_DIR": str(model_dir), "PRELOAD_EMBEDDING_MODELS": model}
    with ServerProcess(root / f"server-{re.sub(r'[^A-Za-z0-9.@-]+', '-', model)}", env) as server:
        pipeline = await run_pipeline(server, documents, {**form, "embedding_model": model})
    print(f"  pipeline: {pipeline['chunks_per_s']:.1f} chunks/s", flush=True)
    after = await engine_rate(model, texts, reference_settings)
    print(f"  engine alone (after): {after['chunks_per_s']:.1f} chunks/s", flush=True)
    if pipeline["chunks"] != len(texts):
        raise RuntimeError(f"the server made {pipeline['chunks']} chunks, the reference {len(texts)}")
    best = max(before["chunks_per_s"], after["chunks_per_s"])
    mean = (before["chunks_per_s"] + after["chunks_per_s"]) / 2
    pipeline["tokens_per_s"] = before["tokens"] / pipeline["seconds"]
    cpu = pipeline["server_cpu_seconds"]
    return {
        "model": model, "pipeline": pipeline, "engine_before": before, "engine_after": after,
        "ratio": pipeline["chunks_per_s"] / best, "ratio_vs_mean_engine": pipeline["chunks_per_s"] / mean,
        # Engine CPU time / server CPU time for the same chunks: the overhead, less sensitive to other load.
        "cpu_ratio": min(before["cpu_seconds"], after["cpu_seconds"]) / cpu if cpu else None,
        "target_ratio": TARGET_RATIO, "passed": pipeline["chunks_per_s"] / best >= TARGET_RATIO,
    }


def describe_corpus(documents: list[str], texts: list[str], options: ChunkingOptions) -> dict[str, Any]:
    words = [len(d.split()) for d in documents]
    return {"documents": len(documents), "words_min": min(words), "words_mean": statistics.mean(words),
            "words_max": max(words), "chunks": len(texts), "unique_chunks": len(set(texts)),
            "chunking": {"method": options.method, "size_words": options.max_size,
                         "overlap_words": options.overlap}}


def print_summary(report: dict[str, Any]) -> None:
    corpus = report["corpus"]
    print(f"{corpus['documents']} documents ({corpus['words_min']}-{corpus['words_max']} words), "
          f"{corpus['chunks']} chunks of {corpus['chunking']['size_words']} words "
          f"(overlap {corpus['chunking']['overlap_words']})")
    print(f"{'model':<52}{'pipeline c/s':>13}{'engine c/s':>12}{'ratio':>7}{'cpu ratio':>10}  "
          f"target >= {TARGET_RATIO}")
    for run in report["runs"]:
        engine = max(run["engine_before"]["chunks_per_s"], run["engine_after"]["chunks_per_s"])
        verdict = "PASS" if run["passed"] else "FAIL"
        cpu = f"{run['cpu_ratio']:.2f}" if run["cpu_ratio"] else "-"
        print(f"{run['model']:<52}{run['pipeline']['chunks_per_s']:>13.1f}{engine:>12.1f}{run['ratio']:>7.2f}"
              f"{cpu:>10}  {verdict}")
        for side, passes in (("pipeline", run["pipeline"]["passes"]), ("engine", run["engine_after"]["passes"])):
            if passes["passes"]:
                print(f"  {side} passes: {passes['passes']}, {passes['rows_per_pass']:.2f} rows and "
                      f"{passes['padded_tokens_per_pass']:.0f} padded tokens each, padding efficiency "
                      f"{passes['padding_efficiency']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--min-words", type=int, default=300)
    parser.add_argument("--max-words", type=int, default=3000)
    parser.add_argument("--chunk-size", type=int, default=150, help="words per chunk")
    parser.add_argument("--chunk-overlap", type=int, default=30, help="words of overlap")
    parser.add_argument("--model", action="append", dest="models",
                        help=f"provider:model, repeatable (default: {', '.join(DEFAULT_MODELS)})")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "ingestion.json")
    args = parser.parse_args()

    options = ChunkingOptions("words", args.chunk_size, args.chunk_overlap)
    documents = build_documents(args.documents, 0, args.min_words, args.max_words)
    texts = chunk_documents(documents, options)
    form = {"chunk_method": "words", "chunk_size": str(args.chunk_size), "chunk_overlap": str(args.chunk_overlap)}
    settings = Settings()
    report: dict[str, Any] = {"machine": machine_info(), "corpus": describe_corpus(documents, texts, options),
                              "settings": {"pipeline_concurrency": settings.embeddings_pipeline_concurrency,
                                           "batch_max_wait_ms": settings.embeddings_batch_max_wait_ms,
                                           "pass_padded_tokens": settings.embeddings_local_batch_tokens},
                              "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-ingestion-") as root:
        for model in args.models or DEFAULT_MODELS:
            print(f"{model}:", flush=True)
            report["runs"].append(asyncio.run(bench_model(model, documents, texts, form, Path(root))))
            write_report(args.out, report)  # partial results survive a later failure
    report["load_average_at_end"] = load_average()
    write_report(args.out, report)
    print_summary(report)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
