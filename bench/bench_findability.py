"""Findability (issue #13): can a sentence taken from anywhere in a long document find that document?

Long real documents (`corpus.long_documents`: the installed packages' long descriptions, 1,000+
words each) are uploaded to the real server; from each, the sentence nearest to 10 %, 20 %, ..., 90 %
of its length is searched verbatim, and a hit is the document among the top 5 results. Reported
per search mode (vector, hybrid, fts) and per position, for the server's defaults and for other
chunkings given as server settings (a fresh server and data dir each).

    .venv/bin/python bench/bench_findability.py [--configs defaults tokens-window words-150 words-1000] [--out PATH]

Targets with the defaults: vector >= 0.90, hybrid >= 0.98, no position below 0.85 (in either mode).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import long_documents  # noqa: E402
from harness import ServerProcess, machine_info, write_report  # noqa: E402

POSITIONS = [p / 10 for p in range(1, 10)]
MODES = ("vector", "hybrid", "fts")
TOP_K = 5
PER_POSITION = 3          # sentences per position and document: 81 queries per position on 27 documents
TARGETS = {"vector": 0.90, "hybrid": 0.98, "bucket_min": 0.85}
CONFIGS: dict[str, dict[str, str]] = {
    "defaults": {},                                              # tokens, 128, overlap 25 (a fifth)
    "tokens-window": {"CHUNKING_MAX_SIZE": "0"},                 # tokens, the model's window (254), overlap 32
    "words-150": {"CHUNKING_METHOD": "words", "CHUNKING_MAX_SIZE": "150", "CHUNKING_OVERLAP": "30"},
    "words-1000": {"CHUNKING_METHOD": "words", "CHUNKING_MAX_SIZE": "1000", "CHUNKING_OVERLAP": "200"},  # before #13
}
_SENTENCE = re.compile(r"[A-Z][^.!?\n]{40,400}[.!?](?=\s|$)")


def probes(text: str, corpus: str, per_position: int = PER_POSITION) -> list[tuple[float, str]]:
    """(position, sentence) pairs: for each position, the `per_position` sentences (8-60 words, one
    line) starting nearest to that share of the text, among those found once in the whole corpus
    (a sentence several documents share, "All notable changes to this project will be documented
    in this file.", has no one right answer)."""
    sentences = [(m.start(), m.group()) for m in _SENTENCE.finditer(text)
                 if 8 <= len(m.group().split()) <= 60 and corpus.count(m.group()) == 1]
    out = []
    for position in POSITIONS:
        target = position * len(text)
        nearest = sorted(sentences, key=lambda s: abs(s[0] - target))[:per_position]
        out.extend((position, sentence) for _, sentence in nearest)
    return out


async def ingest(client: httpx.AsyncClient, documents: list[tuple[str, str]]) -> tuple[list[int], dict[str, int]]:
    async def add(name: str, text: str) -> dict[str, Any]:
        response = await client.post("/api/v1/media/add", json={"title": name, "content": text})
        response.raise_for_status()
        return dict(response.json())

    added = await asyncio.gather(*(add(name, text) for name, text in documents))
    jobs: dict[str, Any] = {}
    while len(jobs) < len(added):
        await asyncio.sleep(0.5)
        page = (await client.get("/api/v1/media/embeddings/jobs", params={"limit": 500})).json()["items"]
        jobs = {j["job_id"]: j for j in page if j["status"] in ("completed", "failed", "cancelled")}
    failed = [j for j in jobs.values() if j["status"] != "completed"]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) failed: {failed[0]['error']}")
    totals = {"chunks": sum(j["total_chunks"] for j in jobs.values()),
              "truncated_chunks": sum(j["truncated_chunks"] for j in jobs.values())}
    return [a["media_id"] for a in added], totals


async def measure(server: ServerProcess, documents: list[tuple[str, str]]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers, timeout=600) as client:
        started = time.perf_counter()
        ids, totals = await ingest(client, documents)
        ingest_s = time.perf_counter() - started
        hits: dict[str, dict[float, list[bool]]] = {mode: {p: [] for p in POSITIONS} for mode in MODES}
        misses: list[dict[str, Any]] = []
        corpus = "\n\n".join(text for _, text in documents)
        for media_id, (name, text) in zip(ids, documents, strict=True):
            for position, sentence in probes(text, corpus):
                for mode in MODES:
                    response = await client.post("/api/v1/rag/search",
                                                 json={"query": sentence, "mode": mode, "top_k": TOP_K})
                    response.raise_for_status()
                    found = [r["media_id"] for r in response.json()["data"]]
                    hits[mode][position].append(media_id in found)
                    if media_id not in found and mode == "vector":
                        titles = [r["title"] for r in response.json()["data"]]
                        misses.append({"document": name, "position": position, "query": sentence, "got": titles})
    report: dict[str, Any] = {"ingest_seconds": round(ingest_s, 1), **totals, "vector_misses": misses}
    for mode in MODES:
        buckets = {f"{int(p * 100)}%": sum(v) / len(v) for p, v in hits[mode].items()}
        flat = [hit for v in hits[mode].values() for hit in v]
        report[mode] = {"hit_at_5": round(sum(flat) / len(flat), 4), "queries": len(flat),
                        "by_position": {k: round(v, 4) for k, v in buckets.items()},
                        "worst_position": round(min(buckets.values()), 4)}
    return report


def verdict(defaults: dict[str, Any]) -> dict[str, Any]:
    worst = min(defaults["vector"]["worst_position"], defaults["hybrid"]["worst_position"])
    return {"vector": defaults["vector"]["hit_at_5"] >= TARGETS["vector"],
            "hybrid": defaults["hybrid"]["hit_at_5"] >= TARGETS["hybrid"],
            "no_position_below": worst >= TARGETS["bucket_min"], "worst_position": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--min-words", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/findability.json"))
    args = parser.parse_args()
    documents = long_documents(min_words=args.min_words)
    report: dict[str, Any] = {
        "machine": machine_info(), "documents": len(documents),
        "words": sum(len(text.split()) for _, text in documents), "top_k": TOP_K, "targets": TARGETS,
        "configs": {},
    }
    for name in args.configs:
        with tempfile.TemporaryDirectory() as data, ServerProcess(Path(data), CONFIGS[name]) as server:
            result = asyncio.run(measure(server, documents))
        report["configs"][name] = {"settings": CONFIGS[name], **result}
        print(f"{name}: vector {result['vector']['hit_at_5']:.3f} (worst {result['vector']['worst_position']:.2f}), "
              f"hybrid {result['hybrid']['hit_at_5']:.3f} (worst {result['hybrid']['worst_position']:.2f}), "
              f"fts {result['fts']['hit_at_5']:.3f}; {result['chunks']} chunks, "
              f"{result['truncated_chunks']} truncated", flush=True)
    if "defaults" in report["configs"]:
        report["defaults_meet_targets"] = verdict(report["configs"]["defaults"])
    write_report(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
