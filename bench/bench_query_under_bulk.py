"""How long a one-text request (a RAG query) waits while a big request of the same model runs (one
LangChain `embed_documents` batch of 1,000 texts, or ingestion's chunks). The micro-batcher used to
serve the oldest row first, so such a query waited for the whole big request (9 s here); a request
that fits one pass now goes ahead of a bigger one's older rows, one pass at a time.

    .venv/bin/python bench/bench_query_under_bulk.py [--bulk-texts 1000] [--out PATH]

The real server (default settings, its engine choice, cache off) gets one-text requests one at a
time: 20 on the idle server, then, from a second client, one request of `--bulk-texts` corpus
passages, and one-text requests back to back for as long as it runs. Reports the idle and
during-bulk latencies and the bulk request's own time. Benchmark only: changes no app code.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import build_corpus  # noqa: E402
from harness import ServerProcess, load_average, machine_info, percentiles_ms, write_report  # noqa: E402

from tldw_Server_API.app.core.config import BUNDLED_MODEL_ID  # noqa: E402


def one_text(client: httpx.Client, number: int) -> float:
    """Seconds one one-text request takes (a new text each time: the cache is off anyway)."""
    start = time.perf_counter()
    client.post("/api/v1/embeddings", json={"model": BUNDLED_MODEL_ID,
                                            "input": f"query {number} {time.time()} about volcanoes"}
                ).raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bulk-texts", type=int, default=1000)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "query_under_bulk.json")
    args = parser.parse_args()
    texts = build_corpus(args.bulk_texts, seed=3)
    report: dict[str, Any] = {"machine": machine_info(), "bulk_texts": len(texts)}
    with tempfile.TemporaryDirectory(prefix="bench-hol-") as tmp, \
            ServerProcess(Path(tmp), {"EMBEDDINGS_CACHE_ENABLED": "false"}) as server, \
            httpx.Client(base_url=server.base_url, headers=server.headers, timeout=600) as client:
        client.post("/api/v1/embeddings", json={"model": BUNDLED_MODEL_ID, "input": texts[:50]}).raise_for_status()
        idle = [one_text(client, n) for n in range(20)]
        finished, bulk_seconds = threading.Event(), []

        def bulk() -> None:
            with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=600) as other:
                start = time.perf_counter()
                other.post("/api/v1/embeddings", json={"model": BUNDLED_MODEL_ID, "input": texts}).raise_for_status()
                bulk_seconds.append(time.perf_counter() - start)
            finished.set()

        runner = threading.Thread(target=bulk)
        runner.start()
        time.sleep(0.5)   # the bulk request's rows are in the pool
        during = [one_text(client, 0)]   # at least one, sent while the bulk request runs
        while not finished.is_set():
            during.append(one_text(client, len(during)))
        runner.join()
    report |= {"idle": percentiles_ms(idle), "during_bulk": percentiles_ms(during) | {"requests": len(during),
               "max_ms": max(during) * 1000}, "bulk_seconds": bulk_seconds[0], "load_average_at_end": load_average()}
    write_report(args.out, report)
    print(f"one-text p50 idle {report['idle']['p50_ms']:.1f} ms; while a {len(texts)}-text request ran "
          f"({bulk_seconds[0]:.1f} s): {len(during)} requests, max {report['during_bulk']['max_ms']:.0f} ms")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
