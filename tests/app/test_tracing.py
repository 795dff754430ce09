"""OpenTelemetry: the span tree of one upload -> search, recorded by an in-memory exporter in a
process of its own (a tracer provider is process-wide). The upload's request span is a root; the
job's three pipeline stages join its trace through the message's traceparent (the first under
the request span itself), the embedding stage holds the cache and provider spans, the provider
span the batcher's queue and inference spans; the search request is a trace of its own with the
query's embedding under it. Without OTEL_EXPORTER_OTLP_ENDPOINT nothing is installed (no-op)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = r'''
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
from fastapi.testclient import TestClient
from support import ADMIN_KEY, make_settings, wait_for_jobs
from tldw_Server_API.app.main import create_app
settings = make_settings(Path(sys.argv[1]), Path(sys.argv[2]),
                         embeddings_default_model="sentence-transformers/all-MiniLM-L6-v2")
with TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
    added = client.post("/api/v1/media/add", json={"title": "t", "content": "Glaciers carve valleys slowly."})
    assert added.status_code == 201, added.text
    wait_for_jobs(client)
    found = client.post("/api/v1/rag/search", json={"query": "how are valleys carved?", "mode": "vector"})
    assert found.status_code == 200, found.text
spans = [{"name": s.name, "trace": f"{s.context.trace_id:032x}", "id": f"{s.context.span_id:016x}",
          "parent": f"{s.parent.span_id:016x}" if s.parent else None, "attributes": dict(s.attributes or {})}
         for s in exporter.get_finished_spans()]
print(json.dumps(spans))
'''


def run_traced(tmp_path: Path, tiktoken_dir: Path) -> list[dict[str, Any]]:
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "OTEL_EXPORTER_OTLP_ENDPOINT"}
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(tiktoken_dir)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return list(json.loads(run.stdout.strip().splitlines()[-1]))


def test_the_span_tree_of_an_upload_then_a_search(tmp_path: Path, tiktoken_dir: Path) -> None:
    spans = run_traced(tmp_path, tiktoken_dir)
    by_id = {s["id"]: s for s in spans}

    def one(name: str) -> dict[str, Any]:
        found = [s for s in spans if s["name"] == name]
        assert len(found) == 1, (name, [s["name"] for s in spans])
        return found[0]

    def ancestors(span: dict[str, Any]) -> list[str]:
        names = []
        while span["parent"] in by_id:
            span = by_id[span["parent"]]
            names.append(span["name"])
        return names

    # The request span (ours; FastAPI may wrap it in its own server span: then that is the root).
    upload = one("HTTP POST /api/v1/media/add")
    assert upload["attributes"]["http.status_code"] == 201 and upload["attributes"]["request_id"]
    assert all(by_id[a]["name"] != "HTTP POST /api/v1/media/add" for a in [upload["parent"]] if a in by_id)
    stages = {name: one(f"pipeline.{name}") for name in ("chunking", "embedding", "storage")}
    assert {s["trace"] for s in stages.values()} == {upload["trace"]}      # the job joins the upload's trace
    assert all(upload["name"] in ancestors(s) for s in stages.values())   # under the request that made it
    embedding_children = [s for s in spans if "pipeline.embedding" in ancestors(s)]
    assert {"embeddings.cache", "provider.embed", "batcher.queue", "model.inference"} <= {
        s["name"] for s in embedding_children}
    inference = [s for s in embedding_children if s["name"] == "model.inference"]
    assert all("provider.embed" in ancestors(s) for s in inference)

    search = one("HTTP POST /api/v1/rag/search")
    assert search["trace"] != upload["trace"]
    under_search = {s["name"] for s in spans if s["trace"] == search["trace"]}
    assert {"embeddings.cache", "provider.embed", "model.inference"} <= under_search, under_search


def test_without_an_endpoint_tracing_is_off_and_spans_are_no_ops() -> None:
    from tldw_Server_API.app.core.tracing import configure_tracing, stage_span, traceparent

    assert configure_tracing(None) is False
    assert traceparent() is None
    with stage_span("pipeline.embedding", "not-a-traceparent", job_id="j") as current:
        assert not current.get_span_context().is_valid or not current.is_recording()
