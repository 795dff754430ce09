"""Memory soak: the real server under a mixed load for `--minutes` (default 10), its RSS sampled
every `--sample-s` seconds; the report gives the RSS slope (MB/min, least squares) after the
first `--warmup-min` minutes (default 2), against the target of < 5 MB/min.

The load, from `--clients` concurrent clients (aiohttp), each looping over a random mix:
- `POST /embeddings` of 1-8 passages, half of them new text (so the cache fills, then turns over:
  the server's cache is sized small on purpose with EMBEDDINGS_CACHE_MAX_SIZE) and half repeats;
- `POST /rag/search` in hybrid mode;
- `POST /media/add` of a short document (chunked, embedded and stored by the job executor), then
  `DELETE` of an older one with `purge_vectors=true`, so stored data stays bounded too;
- bad input (a 400) now and then.
`--store pgvector` stores the uploads in a throwaway pgvector database (pgserver) instead of the
server's embedded Chroma, to tell the store's memory from the rest of the upload path.
Writes bench/results/soak.json. Run: `.venv/bin/python bench/soak.py` (`--minutes 1` to try it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import build_corpus  # noqa: E402
from harness import CpuSteal, ServerProcess, machine_info, pgvector_server, write_report  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


RSS_PARTS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")   # all, the heap and anonymous maps, mapped files


def rss_mb(pid: int) -> dict[str, float]:
    """The process's resident memory in MB, in all (`VmRSS`) and by kind: anonymous memory (the
    heaps, oneDNN's code) apart from pages of mapped files (model weights, the stores' files),
    which the kernel can take back."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in RSS_PARTS:
            found[name] = int(value.split()[0]) / 1024
    if "VmRSS" not in found:
        raise RuntimeError("no VmRSS")
    return found


def slope_mb_per_min(samples: list[tuple[float, float]], after_s: float) -> float | None:
    points = [(t, mb) for t, mb in samples if t >= after_s]
    if len(points) < 3:
        return None
    t = np.array([p[0] for p in points]) / 60.0
    mb = np.array([p[1] for p in points])
    return float(np.polyfit(t, mb, 1)[0])


class Load:
    def __init__(self, server: ServerProcess, corpus: list[str], seed: int, uploads: bool = True) -> None:
        self.server = server
        self.uploads = uploads
        self.corpus = corpus
        self.rnd = random.Random(seed)
        self.counts: dict[str, int] = {}
        self.statuses: dict[str, int] = {}
        self.media: list[int] = []

    def _count(self, kind: str, status: int) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        key = f"{kind}:{status}"
        self.statuses[key] = self.statuses.get(key, 0) + 1

    async def _post(self, session: aiohttp.ClientSession, kind: str, path: str, body: Any) -> Any:
        async with session.post(self.server.base_url + path, json=body) as response:
            data = await response.json(content_type=None)
            self._count(kind, response.status)
            return data if response.status < 300 else None

    async def one(self, session: aiohttp.ClientSession, serial: int) -> None:
        roll = self.rnd.random()
        if roll < 0.6:
            texts = [self.rnd.choice(self.corpus) + (f" {serial}-{i}" if self.rnd.random() < 0.5 else "")
                     for i in range(self.rnd.randint(1, 8))]
            body = {"model": MODEL, "input": texts, "truncate": True}
            await self._post(session, "embeddings", "/api/v1/embeddings", body)
        elif roll < 0.85:
            query = " ".join(self.rnd.choice(self.corpus).split()[:8])
            await self._post(session, "search", "/api/v1/rag/search", {"query": query, "mode": "hybrid", "top_k": 5})
        elif roll < 0.97 and self.uploads:
            content = " ".join(self.rnd.sample(self.corpus, 6))
            added = await self._post(session, "upload", "/api/v1/media/add", {"title": f"doc {serial}",
                                                                               "content": content})
            if added is not None:
                self.media.append(int(added["media_id"]))
            if len(self.media) > 40:
                old = self.media.pop(0)
                async with session.delete(f"{self.server.base_url}/api/v1/media/{old}",
                                          params={"purge_vectors": "true"}) as response:
                    self._count("delete", response.status)
        else:
            await self._post(session, "bad_input", "/api/v1/embeddings", {"model": MODEL, "input": []})

    async def client(self, deadline: float, number: int) -> None:
        async with aiohttp.ClientSession(headers=self.server.headers) as session:
            serial = number * 10_000_000
            while time.monotonic() < deadline:
                serial += 1
                await self.one(session, serial)


async def sample_rss(pid: int, started: float, deadline: float, every_s: float,
                     samples: list[tuple[float, dict[str, float]]]) -> None:
    while time.monotonic() < deadline:
        samples.append((time.monotonic() - started, rss_mb(pid)))
        await asyncio.sleep(every_s)


async def soak(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    load = Load(server, build_corpus(2000, seed=args.seed), args.seed, uploads=not args.no_uploads)
    started = time.monotonic()
    deadline = started + args.minutes * 60
    split: list[tuple[float, dict[str, float]]] = []
    assert server.process is not None
    with CpuSteal() as steal:
        await asyncio.gather(sample_rss(server.process.pid, started, deadline, args.sample_s, split),
                             *(load.client(deadline, n) for n in range(args.clients)))
    samples = [(t, parts["VmRSS"]) for t, parts in split]
    slope = slope_mb_per_min(samples, args.warmup_min * 60)
    kinds = [kind for kind in RSS_PARTS[1:] if all(kind in parts for _, parts in split)]
    return {
        "minutes": args.minutes, "uploads": not args.no_uploads, "store": args.store,
        "warmup_minutes": args.warmup_min,
        "clients": args.clients,
        "requests": load.counts, "statuses": load.statuses,
        "rss_mb": {"first": samples[0][1], "after_warmup": next((mb for t, mb in samples if t >= args.warmup_min * 60),
                                                                None),
                   "last": samples[-1][1], "max": max(mb for _, mb in samples)},
        "rss_slope_mb_per_min_after_warmup": slope,
        # the same slope of each kind of resident memory: what grows, the heap or mapped files
        "slope_by_kind_mb_per_min": {kind: slope_mb_per_min([(t, parts[kind]) for t, parts in split],
                                                             args.warmup_min * 60) for kind in kinds},
        "by_kind_mb": {kind: {"after_warmup": next((p[kind] for t, p in split if t >= args.warmup_min * 60), None),
                              "last": split[-1][1][kind]} for kind in kinds},
        "target_mb_per_min": 5.0, "target_met": slope is not None and slope < 5.0,
        "cpu_steal": steal.share,
        "samples": [[round(t, 1), round(mb, 1)] for t, mb in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-min", type=float, default=2.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--cache-size", type=int, default=2000, help="EMBEDDINGS_CACHE_MAX_SIZE of the server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-uploads", action="store_true", help="embeddings and search only (no stored data)")
    parser.add_argument("--store", choices=("chroma", "pgvector"), default="chroma",
                        help="where uploads are stored: the embedded Chroma (default) or a pgvector database")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment of the server process (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        env = {"EMBEDDINGS_CACHE_MAX_SIZE": str(args.cache_size)}
        if args.store == "pgvector":
            env |= {"RAG__VECTOR_STORE_TYPE": "pgvector", "RAG__PGVECTOR__DSN": stack.enter_context(pgvector_server())}
        data = stack.enter_context(tempfile.TemporaryDirectory(prefix="tldw-soak-"))
        env |= dict(item.split("=", 1) for item in args.server_env)
        server = stack.enter_context(ServerProcess(Path(data), env))
        report = {"machine": machine_info(), "server_env": args.server_env, **asyncio.run(soak(server, args))}
    write_report(args.out, report)
    print({k: v for k, v in report.items() if k != "samples"})


if __name__ == "__main__":
    main()
