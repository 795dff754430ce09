"""bench/bench_search.py writes its 100k records through the core stores itself (not through the
pipeline), so a change to what a stored chunk must carry can silently break it (it did once: the
metadata gained `job_id`). Here its own functions write a small data set the same way, and the
real app's RAG search must then answer from it: hits on the bench's media, whose text is the
stored span of that media's content."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from support import ADMIN_KEY, MODEL, make_settings

from tldw_Server_API.app.main import create_app

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
bench_search = importlib.import_module("bench_search")


def test_the_search_benchs_records_are_what_rag_search_reads(tmp_path: Path, tiktoken_dir: Path) -> None:
    passages = [f"passage number {i} about volcanoes, bread and chess openings" for i in range(10)]
    base = np.random.default_rng(0).standard_normal((10, 384)).astype(np.float32)
    vectors = bench_search.expand_vectors(base / np.linalg.norm(base, axis=1, keepdims=True), 40, 0.6, seed=0)
    dataset = bench_search.build_dataset(passages, vectors, media_count=4)
    settings = make_settings(tmp_path, tiktoken_dir)
    bench_search.write_media(settings.data_dir, dataset)
    assert bench_search.load_vectors(settings, dataset, f"{MODEL}@fp32")["records"] == 40

    with TestClient(create_app(settings)) as client:
        response = client.post("/api/v1/rag/search", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                               json={"query": "volcanoes", "mode": "vector", "top_k": 5})
        assert response.status_code == 200, response.text
        hits = response.json()["data"]
        assert len(hits) == 5
        for hit in hits:
            content = dataset.media_contents[hit["media_id"] - 1]
            assert content[hit["start_char"]:hit["end_char"]] == hit["text"] == dataset.documents[
                dataset.record(hit["media_id"], hit["chunk_index"])]
