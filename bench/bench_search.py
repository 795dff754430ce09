"""Vector search latency and recall (issue #4): 100,000 chunks stored in one user's media collection,
`POST /api/v1/rag/search` `{mode: "vector", top_k: 10}` timed from a client one query at a time
(query embedding included), recall@10 against exact numpy search over the same stored vectors, on
Chroma and on pgvector (pgserver). Targets: p50 <= 15 ms and recall@10 >= 0.95 on both stores.

    .venv/bin/python bench/bench_search.py [--chunks 100000] [--unique 5000] [--queries 200]
        [--store chroma --store pgvector] [--query-model provider:model ...] [--profile-only] [--out PATH]

Stored vectors: `--unique` real passages (bench/corpus.py) embedded with the bundled model, each
stored as is and as copies moved by random noise (norm 0.6, renormalised: cosine ~0.86 to the
original) up to `--chunks`: embedding 100,000 real chunks would take most of an hour on 2 cores.
Queries are other real passages (16 words), embedded by the server itself. Benchmark only: loads
data through the core stores, measures the server over HTTP, changes no app code.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import build_corpus  # noqa: E402
from harness import (  # noqa: E402
    CpuSteal,
    ServerProcess,
    load_average,
    machine_info,
    percentiles_ms,
    pgvector_server,
    server_means_ms,
    server_seconds,
    write_report,
)

from tldw_Server_API.app.core.AuthNZ.api_keys import SINGLE_USER_ID  # noqa: E402
from tldw_Server_API.app.core.config import BUNDLED_MODEL_ID, RAGSettings, Settings  # noqa: E402
from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDBFactory, content_hash  # noqa: E402
from tldw_Server_API.app.core.Embeddings.ChromaDB_Library import media_chunk_id, media_collection_name  # noqa: E402
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import (  # noqa: E402
    create_provider_registry,
)
from tldw_Server_API.app.core.Embeddings.input_processing import l2_normalize  # noqa: E402
from tldw_Server_API.app.core.Embeddings.queue_schemas import ChunkMetadata  # noqa: E402
from tldw_Server_API.app.core.RAG.vector_stores.factory import create_vector_store_factory  # noqa: E402

TARGET_P50_MS = 15.0
TARGET_RECALL = 0.95
TOP_K = 10
SEARCH_DEPTH = TOP_K       # what RAG search asks the store for in vector mode (deeper only to refill deleted media)
SERVER_MODEL = f"huggingface:{BUNDLED_MODEL_ID}@fp32"   # torch fp32 (`huggingface:<id>` runs the choice's bf16)
ONNX_MODEL = f"onnx:{BUNDLED_MODEL_ID}@fp32"
BULK_MODEL = ONNX_MODEL   # the same vectors as huggingface (cosine 1.0000), faster
DEFAULT_QUERY_MODELS = (BUNDLED_MODEL_ID, ONNX_MODEL, SERVER_MODEL)   # the default (engine choice), onnx, torch


@dataclass(frozen=True)
class Dataset:
    vectors: np.ndarray            # (n, d) float32, unit rows; record k is chunk k % per_media of media k // per_media
    documents: list[str]
    per_media: int
    media_contents: list[str]
    spans: list[tuple[int, int]]   # (start_char, end_char) of each record in its media's content

    def key(self, record: int) -> tuple[int, int]:
        return record // self.per_media + 1, record % self.per_media

    def record(self, media_id: int, chunk_index: int) -> int:
        return (media_id - 1) * self.per_media + chunk_index


@dataclass(frozen=True)
class Workload:
    dataset: Dataset
    queries: list[str]          # the warm-up queries first
    warmup: int
    query_vectors: np.ndarray   # of the measured queries, by the server's default model in this process
    exact: np.ndarray           # exact top-10 record indices of the measured queries
    model_id: str


def expand_vectors(base: np.ndarray, total: int, noise: float, seed: int) -> np.ndarray:
    """`base` rows, then copies of them moved by random directions of norm `noise`, renormalised."""
    rnd = np.random.default_rng(seed)
    rows = [base]
    while sum(len(r) for r in rows) < total:
        count = min(len(base), total - sum(len(r) for r in rows))
        direction = rnd.standard_normal((count, base.shape[1])).astype(np.float32)
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        rows.append(l2_normalize(base[:count] + noise * direction))
    return np.ascontiguousarray(np.concatenate(rows)[:total], dtype=np.float32)


def build_dataset(passages: list[str], vectors: np.ndarray, media_count: int) -> Dataset:
    """Records spread over `media_count` media in order, so copies of one passage land in other media."""
    per_media = len(vectors) // media_count
    documents = [passages[k % len(passages)] for k in range(len(vectors))]
    contents, spans = [], []
    for media in range(media_count):
        offset, parts = 0, []
        for text in documents[media * per_media:(media + 1) * per_media]:
            spans.append((offset, offset + len(text)))
            parts.append(text)
            offset += len(text) + 2
        contents.append("\n\n".join(parts))
    return Dataset(vectors[:per_media * media_count], documents[:per_media * media_count], per_media, contents, spans)


async def embed_texts(model: str, texts: list[str], settings: Settings) -> np.ndarray:
    """Normalised vectors of `texts` from the engine directly (one call; it batches itself)."""
    registry = create_provider_registry(settings.engine_config())
    try:
        resolved = registry.resolve(model)
        batch = await resolved.provider.embed(resolved.info.model_id, texts)
    finally:
        await registry.aclose()
    return l2_normalize(np.asarray(batch.vectors, dtype=np.float32))


def write_media(data_dir: Path, dataset: Dataset) -> None:
    """The media rows the search's live-media check reads: one per `per_media` records, ids 1..n."""
    factory = MediaDBFactory(data_dir)
    try:
        db = factory.get(SINGLE_USER_ID)
        for number, content in enumerate(dataset.media_contents, start=1):
            record = db.add_media(f"Bench document {number}", content, "text", f"bench-{number}.txt")
            if record.id != number:
                raise RuntimeError(f"expected media id {number}, got {record.id}: the data dir is not fresh")
    finally:
        factory.close_all()


def metadatas(dataset: Dataset, model_id: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    hashes = [content_hash(c) for c in dataset.media_contents]
    dimension = int(dataset.vectors.shape[1])
    out = []
    for record, (start, end) in enumerate(dataset.spans):
        media_id, chunk_index = dataset.key(record)
        out.append(ChunkMetadata(
            media_id=media_id, job_id=f"job_{media_id:032x}", chunk_index=chunk_index, start_char=start, end_char=end,
            content_hash=hashes[media_id - 1], embedding_model=model_id, embedding_provider="huggingface",
            embedding_dimension=dimension, title=f"Bench document {media_id}", created_at=now,
        ).to_store_dict())
    return out


def load_vectors(settings: Settings, dataset: Dataset, model_id: str) -> dict[str, Any]:
    """One upsert of every record through the store factory (pgvector: COPY, then the HNSW build)."""
    ids = [media_chunk_id(*dataset.key(k)) for k in range(len(dataset.vectors))]
    metas = metadatas(dataset, model_id)
    factory = create_vector_store_factory(settings.storage_config())
    try:
        store = factory.for_user(SINGLE_USER_ID)
        name = media_collection_name(SINGLE_USER_ID)
        store.ensure_collection(name, int(dataset.vectors.shape[1]))
        start = time.perf_counter()
        store.upsert(name, ids, dataset.vectors, documents=dataset.documents, metadatas=metas)
        seconds = time.perf_counter() - start
        count = store.count(name)
    finally:
        factory.close()
    if count != len(ids):
        raise RuntimeError(f"the store holds {count} records, expected {len(ids)}")
    return {"records": count, "seconds": seconds, "records_per_s": count / seconds}


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def http_search(server: ServerProcess, queries: list[str], warmup: int) -> dict[str, Any]:
    """Each query in turn over one keep-alive connection: client latencies, the (media_id, chunk_index)
    hits, one response's size, and the server's own mean times over the same queries."""
    latencies, hits, size = [], [], 0
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=60) as client:
        for n, query in enumerate(queries):
            if n == warmup:
                before = server_seconds(client)
            start = time.perf_counter()
            response = client.post("/api/v1/rag/search", json={"query": query, "top_k": TOP_K, "mode": "vector"})
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            if n < warmup:
                continue
            latencies.append(elapsed)
            hits.append([(h["media_id"], h["chunk_index"]) for h in response.json()["data"]])
            size = len(response.content)
        means = server_means_ms(before, server_seconds(client))
    return {"latencies": latencies, "hits": hits, "response_bytes": size, "server": means}


def recall_at_k(hits: list[list[tuple[int, int]]], work: Workload) -> dict[str, Any]:
    """Mean share of the exact top 10 found. A hit scoring as high as the exact 10th (within float
    noise) counts too, so that ties never count against a store; `strict` compares ids only."""
    values, strict = [], []
    for found, truth, vector in zip(hits, work.exact, work.query_vectors, strict=True):
        records = [work.dataset.record(*h) for h in found]
        tenth = float(work.dataset.vectors[truth[-1]] @ vector)
        scores = work.dataset.vectors[records] @ vector if records else np.zeros(0)
        values.append(min(TOP_K, int((scores >= tenth - 1e-4).sum())) / TOP_K)
        strict.append(len(set(records) & set(truth.tolist())) / TOP_K)
    worst = np.argsort(values, kind="stable")[:3]
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "strict_mean": float(np.mean(strict)),
            "queries_below_0.5": int(sum(v < 0.5 for v in values)),
            "worst": [{"query": work.queries[work.warmup + int(i)], "recall": values[int(i)]} for i in worst]}


def profile_store(settings: Settings, query_vectors: np.ndarray) -> dict[str, Any]:
    """In this process, without HTTP: the store query RAG search makes (depth `SEARCH_DEPTH`) and
    its live-media check (one `live_media_ids` query over the hits' media ids)."""
    factory = create_vector_store_factory(settings.storage_config())
    media = MediaDBFactory(settings.data_dir)
    store_s, live_s, distinct = [], [], []
    try:
        store, db = factory.for_user(SINGLE_USER_ID), media.get(SINGLE_USER_ID)
        name = media_collection_name(SINGLE_USER_ID)
        for n, vector in enumerate(query_vectors):
            start = time.perf_counter()
            found = store.query(name, vector, SEARCH_DEPTH)
            middle = time.perf_counter()
            ids = {int(h.metadata["media_id"]) for h in found}
            db.live_media_ids(ids)
            if n >= 5:  # the first queries open files and warm caches
                store_s.append(middle - start)
                live_s.append(time.perf_counter() - middle)
                distinct.append(len(ids))
    finally:
        factory.close()
        media.close_all()
    return {"store_query": percentiles_ms(store_s), "live_media_check": percentiles_ms(live_s),
            "distinct_media_per_query": float(np.mean(distinct))}


async def profile_embedding(model: str, queries: list[str], settings: Settings) -> dict[str, Any]:
    """The query embedding as RAG search does it: `EmbeddingService.embed_texts(model, [query])`. A
    bare id runs on its engine choice, measured (or read back) first as the server's start-up does."""
    from prometheus_client import CollectorRegistry

    from tldw_Server_API.app.core.services import build_embedding_service

    service = build_embedding_service(settings, CollectorRegistry())
    seconds = []
    try:
        if ":" not in model:
            await service.registry.measure_engines([model])
        engine = service.registry.resolve(model).info.engine
        for n, query in enumerate(queries):
            start = time.perf_counter()
            await service.embed_texts(model, [query], None)
            if n >= 5:
                seconds.append(time.perf_counter() - start)
    finally:
        await service.aclose()
    return {"engine": engine, **percentiles_ms(seconds)}


def profile_embedding_safely(model: str, queries: list[str], settings: Settings) -> dict[str, Any]:
    try:
        return asyncio.run(profile_embedding(model, queries, settings))
    except Exception as exc:  # noqa: BLE001 - the latency runs still mean something without this profile
        return {"error": repr(exc)}


def query_texts(args: argparse.Namespace) -> list[str]:
    """The warm-up and measured queries: real passages cut to 16 words."""
    return [" ".join(p.split()[:16]) for p in build_corpus(args.warmup + args.queries, seed=7)]


def prepare_workload(args: argparse.Namespace, model_dir: Path) -> tuple[Workload, dict[str, Any]]:
    settings = Settings(tldw_data_dir=model_dir.parent / "engine", embeddings_model_dir=model_dir, log_level="WARNING")
    passages = list(dict.fromkeys(build_corpus(args.unique, seed=0)))  # identical passages would tie
    queries = query_texts(args)
    start = time.perf_counter()
    base = asyncio.run(embed_texts(BULK_MODEL, passages, settings))
    embed_s = time.perf_counter() - start
    print(f"embedded {len(passages)} unique passages in {embed_s:.0f} s", flush=True)
    dataset = build_dataset(passages, expand_vectors(base, args.chunks, args.noise, seed=0), args.media)
    query_vectors = asyncio.run(embed_texts(SERVER_MODEL, queries[args.warmup:], settings))
    exact = exact_top_k(dataset.vectors, query_vectors, TOP_K)
    info = {"records": len(dataset.vectors), "unique_passages": len(passages), "media": args.media,
            "records_per_media": dataset.per_media, "noise_norm": args.noise,
            "mean_cosine_copy_to_original": float(1 / np.sqrt(1 + args.noise ** 2)),
            "bulk_vectors_model": BULK_MODEL, "bulk_embedding_seconds": embed_s,
            "queries": args.queries, "warmup_queries": args.warmup, "query_words": 16,
            "media_content_chars_mean": float(np.mean([len(c) for c in dataset.media_contents]))}
    return Workload(dataset, queries, args.warmup, query_vectors, exact, BUNDLED_MODEL_ID), info


def store_settings(kind: str, data_dir: Path, model_dir: Path, dsn: str | None,
                   ef_search: int) -> tuple[Settings, dict[str, str]]:
    rag = RAGSettings.model_validate({"vector_store_type": kind, "pgvector": {"dsn": dsn, "ef_search": ef_search}})
    settings = Settings(tldw_data_dir=data_dir, embeddings_model_dir=model_dir, rag=rag, log_level="WARNING")
    env = {"RAG__VECTOR_STORE_TYPE": kind, "EMBEDDINGS_MODEL_DIR": str(model_dir)}
    if dsn is not None:
        env |= {"RAG__PGVECTOR__DSN": dsn, "RAG__PGVECTOR__EF_SEARCH": str(ef_search)}
    return settings, env


def bench_store(settings: Settings, env: dict[str, str], work: Workload, query_models: list[str]) -> dict[str, Any]:
    write_media(settings.data_dir, work.dataset)
    load = load_vectors(settings, work.dataset, work.model_id)
    print(f"  loaded {load['records']} records in {load['seconds']:.0f} s", flush=True)
    runs = []
    for model in query_models:
        server_env = {**env, "EMBEDDINGS_DEFAULT_MODEL": model, "PRELOAD_EMBEDDING_MODELS": model}
        with ServerProcess(settings.data_dir, server_env) as server, CpuSteal() as steal:
            measured = http_search(server, work.queries, work.warmup)
        latency = percentiles_ms(measured["latencies"])
        recall = recall_at_k(measured["hits"], work)
        runs.append({"query_model": model, "latency": latency, "recall_at_10": recall,
                     "response_bytes": measured["response_bytes"], "server_side": measured["server"],
                     "cpu_steal_share": steal.share,
                     "passed_latency": latency["p50_ms"] <= TARGET_P50_MS,
                     "passed_recall": recall["mean"] >= TARGET_RECALL})
        print(f"  {model}: p50 {latency['p50_ms']:.1f} ms, recall@10 {recall['mean']:.3f}; server means: "
              f"{measured['server']['server_mean_ms']:.1f} ms in the route, "
              f"{measured['server']['embedding_mean_ms']:.1f} ms embedding", flush=True)
    return {"load": load, "runs": runs, "profile": profile_store(settings, work.query_vectors)}


def run_store(kind: str, args: argparse.Namespace, work: Workload, root: Path) -> dict[str, Any]:
    print(f"{kind}:", flush=True)
    models = args.query_models or list(DEFAULT_QUERY_MODELS)
    try:
        if kind == "pgvector":
            with pgvector_server() as dsn:
                settings, env = store_settings(kind, root / kind, root / "models", dsn, args.ef_search)
                return {"store": kind, "ef_search": args.ef_search, **bench_store(settings, env, work, models)}
        settings, env = store_settings(kind, root / kind, root / "models", None, args.ef_search)
        return {"store": kind, **bench_store(settings, env, work, models)}
    except Exception as exc:  # noqa: BLE001 - a store that cannot run is reported, the other still runs
        print(f"  {kind} failed: {exc!r}", flush=True)
        return {"store": kind, "error": repr(exc)}


def print_summary(report: dict[str, Any]) -> None:
    data = report["dataset"]
    print(f"{data['records']} records ({data['unique_passages']} real passages + perturbed copies), "
          f"{data['queries']} queries, top_k {TOP_K}; targets p50 <= {TARGET_P50_MS} ms, recall >= {TARGET_RECALL}")
    print(f"{'store':<10}{'server default model':<50}{'p50':>6}{'p95':>6}{'p99':>6}{'recall':>7}  "
          "means: client/route/embedding, p50: store/live ms")
    for store in report["stores"]:
        if "error" in store:
            print(f"{store['store']:<10}error: {store['error']}")
            continue
        profile = store["profile"]
        for run in store["runs"]:
            lat, side = run["latency"], run["server_side"]
            verdict = "PASS" if run["passed_latency"] and run["passed_recall"] else "FAIL"
            print(f"{store['store']:<10}{run['query_model']:<50}{lat['p50_ms']:>6.1f}{lat['p95_ms']:>6.1f}"
                  f"{lat['p99_ms']:>6.1f}{run['recall_at_10']['mean']:>7.3f}  "
                  f"{lat['mean_ms']:.1f}/{side['server_mean_ms']:.1f}/{side['embedding_mean_ms']:.1f}, "
                  f"{profile['store_query']['p50_ms']:.1f}/{profile['live_media_check']['p50_ms']:.1f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--unique", type=int, default=5000, help="real passages embedded for the stored vectors")
    parser.add_argument("--media", type=int, default=1000, help="media rows the chunks are spread over")
    parser.add_argument("--noise", type=float, default=0.6, help="norm of the perturbation of copied vectors")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--ef-search", type=int, default=RAGSettings().pgvector.ef_search,
                        help="pgvector hnsw.ef_search (default: the server's)")
    parser.add_argument("--store", action="append", dest="stores", choices=["chroma", "pgvector"])
    parser.add_argument("--query-model", action="append", dest="query_models",
                        help=f"server default model, repeatable (default: {', '.join(DEFAULT_QUERY_MODELS)})")
    parser.add_argument("--profile-only", action="store_true",
                        help="only the in-process query-embedding profile of each model (no stores, ~2 min)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "search.json")
    args = parser.parse_args()

    models = args.query_models or list(DEFAULT_QUERY_MODELS)
    if args.profile_only:
        with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
            engine = Settings(tldw_data_dir=Path(tmp), log_level="WARNING")
            queries = query_texts(args)
            write_report(args.out, {"machine": machine_info(), "query_embedding_profile": {
                model: profile_embedding_safely(model, queries, engine) for model in models}})
        print(f"written to {args.out}")
        return
    report: dict[str, Any] = {"machine": machine_info(), "top_k": TOP_K, "store_query_depth": SEARCH_DEPTH,
                              "targets": {"p50_ms": TARGET_P50_MS, "recall_at_10": TARGET_RECALL}, "stores": []}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        root = Path(tmp)
        work, report["dataset"] = prepare_workload(args, root / "models")
        engine = Settings(tldw_data_dir=root / "engine", embeddings_model_dir=root / "models", log_level="WARNING")
        report["query_embedding_profile"] = {model: profile_embedding_safely(model, work.queries, engine)
                                             for model in models}
        for kind in args.stores or ["chroma", "pgvector"]:
            report["stores"].append(run_store(kind, args, work, root))
            write_report(args.out, report)  # partial results survive a later failure
    report["load_average_at_end"] = load_average()
    write_report(args.out, report)
    print_summary(report)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
