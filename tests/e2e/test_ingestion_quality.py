"""Ingestion that loses nothing, through the API with the real model and a real Chroma store: default
chunks fit the model's window (no truncated chunk), a sentence from the last tenth of a long
document finds it by vector search, explicit sizes that cannot fit are refused, a job that did
truncate says so, PDF / DOCX / EPUB / ODT uploads become searchable (PDF results carry their page
and a span that highlights), and unreadable files leave no media row, chunk or vector behind."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import (
    Caller,
    assert_openai_error,
    encrypted_pdf,
    image_only_pdf,
    key_of,
    long_document,
    make_settings,
    wait_for_jobs,
    write_keys_file,
)

from tldw_Server_API.app.main import create_app

USERS = [f"ingest-{i}" for i in range(12)]
DOCS = Path(__file__).resolve().parents[1] / "fixtures" / "documents"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("ingestion")
    keys = write_keys_file(data, {u: key_of(u) for u in USERS})
    settings = make_settings(data / "data", tiktoken_dir, api_keys_file=keys, single_user_api_key=None,
                             auto_download_models=False)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def hf_tokenizer(bundled_model_path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundled_model_path))


def vector_count(client: TestClient, user_id: str) -> int:
    store = client.app.state.services.storage.vector_stores.for_user(user_id)  # type: ignore[attr-defined]
    return sum(store.count(name) for name in store.list_collections())


def stored_chunks(client: TestClient, user_id: str, media_id: int) -> list[Any]:
    return client.app.state.services.storage.media_dbs.get(user_id).list_chunks(media_id)  # type: ignore[attr-defined]


def add(caller: Caller, **body: Any) -> dict[str, Any]:
    response = caller.post("/api/v1/media/add", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def upload(caller: Caller, name: str, data: bytes, **form: str) -> Any:
    return caller.post("/api/v1/media/add", files={"file": (name, data)}, data=form)


def job_of(caller: Caller, added: dict[str, Any]) -> dict[str, Any]:
    return dict(caller.get(f"/api/v1/media/embeddings/jobs/{added['job_id']}").json())


def search(caller: Caller, query: str, mode: str = "vector", top_k: int = 5) -> list[dict[str, Any]]:
    response = caller.post("/api/v1/rag/search", json={"query": query, "mode": mode, "top_k": top_k})
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def test_a_5000_word_document_chunks_within_the_window_and_truncates_nothing(client: TestClient,
                                                                              hf_tokenizer: Any) -> None:
    alice = Caller(client, USERS[0])
    text = long_document(5000)
    added = add(alice, title="long", content=text)
    wait_for_jobs(client)
    job = job_of(alice, added)
    assert job["status"] == "completed" and job["truncated_chunks"] == 0 and job["warning"] is None, job
    assert (job["chunk_method"], job["chunk_size"], job["chunk_overlap"]) == ("tokens", 128, 25)
    chunks = stored_chunks(client, USERS[0], added["media_id"])
    assert len(chunks) == job["total_chunks"] == job["stored_chunks"] > 40
    assert max(len(hf_tokenizer(c.text)["input_ids"]) for c in chunks) <= 128 + 2   # with [CLS] and [SEP]
    assert all(text[c.start_char:c.end_char] == c.text for c in chunks)


def sentences_of(text: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group().strip()) for m in re.finditer(r"[^.!?]{40,300}[.!?]", text)]


def test_a_sentence_from_the_last_tenth_finds_its_document(client: TestClient) -> None:
    bob = Caller(client, USERS[1])
    words = long_document(12_000).split()
    documents = [" ".join(words[i * 2400:(i + 1) * 2400]) for i in range(5)]
    ids = [add(bob, title=f"doc {i}", content=doc)["media_id"] for i, doc in enumerate(documents)]
    wait_for_jobs(client)
    for media_id, doc in zip(ids, documents, strict=True):
        tail = [s for start, s in sentences_of(doc) if start >= 0.9 * len(doc)]
        assert tail, "the document has sentences in its last tenth"
        hits = search(bob, tail[len(tail) // 2])
        assert media_id in [hit["media_id"] for hit in hits], (tail[len(tail) // 2], hits)


def test_an_explicit_chunk_size_over_the_window_is_a_400_and_stores_nothing(client: TestClient) -> None:
    carol = Caller(client, USERS[2])
    for body in ({"chunk_size": 300}, {"chunk_method": "tokens", "chunk_size": 1000}, {"chunk_method": "words",
                                                                                       "chunk_size": 400}):
        error = assert_openai_error(carol.post("/api/v1/media/add", json={"content": "some text", **body}), 400,
                                    "chunk_size_exceeds_window", "chunk_size")
        assert "254 tokens" in error["message"]
    assert carol.get("/api/v1/media").json()["total"] == 0
    assert add(carol, content="fits", chunk_size=254)["media_id"]


def test_a_job_that_truncated_chunks_counts_them_and_says_so(client: TestClient) -> None:
    dave = Caller(client, USERS[3])
    # 200 words of 6-digit numbers: each is several WordPiece tokens, so every chunk is over the window.
    text = " ".join(f"{n:06d}" for n in range(123_456, 123_456 + 800))
    added = add(dave, content=text, chunk_method="words", chunk_size=200, chunk_overlap=0)
    wait_for_jobs(client)
    job = job_of(dave, added)
    assert job["status"] == "completed" and job["truncated_chunks"] == job["total_chunks"] == 4, job
    assert "truncated" in job["warning"] and "tokens" in job["warning"]


def test_reembedding_with_another_window_rechunks_for_it(client: TestClient) -> None:
    erin = Caller(client, USERS[4])
    added = add(erin, content=long_document(1500))
    wait_for_jobs(client)
    assert job_of(erin, added)["chunk_size"] == 128
    smaller = erin.post(f"/api/v1/media/{added['media_id']}/embeddings",
                        json={"chunk_size": 0, "force_regenerate": True})
    assert smaller.status_code == 202, smaller.text
    wait_for_jobs(client)
    job = dict(erin.get(f"/api/v1/media/embeddings/jobs/{smaller.json()['job_id']}").json())
    assert job["status"] == "completed" and job["chunk_size"] == 254 and job["truncated_chunks"] == 0


@pytest.mark.parametrize("name", ["sample.pdf", "sample.docx", "sample.epub", "sample.odt"])
def test_documents_become_searchable(client: TestClient, name: str) -> None:
    frank = Caller(client, USERS[5 + ["sample.pdf", "sample.docx", "sample.epub", "sample.odt"].index(name)])
    response = upload(frank, name, (DOCS / name).read_bytes(), chunk_size="40")   # a chunk or two per page
    assert response.status_code == 201, response.text
    added = response.json()
    assert added["title"] == "Field Notes on Three Crafts"
    wait_for_jobs(client)
    content = frank.get(f"/api/v1/media/{added['media_id']}").json()["content"]
    for mode in ("vector", "hybrid", "fts"):
        hits = search(frank, "why do volcanic ash soils bind phosphate fertiliser", mode=mode, top_k=1)
        assert hits and hits[0]["media_id"] == added["media_id"], (mode, hits)
        hit = hits[0]
        assert content[hit["start_char"]:hit["end_char"]] == hit["text"]   # a span a client can highlight
        assert "Andisols" in hit["text"] or "phosphate" in hit["text"]
        assert hit["page"] == (2 if name == "sample.pdf" else None), (mode, hit)


def test_unreadable_files_are_4xx_and_leave_nothing_behind(client: TestClient) -> None:
    grace = Caller(client, USERS[9])
    pdf = (DOCS / "sample.pdf").read_bytes()
    cases = [
        ("corrupt.pdf", pdf[: len(pdf) // 2], 415, "unsupported_document"),
        ("secret.pdf", encrypted_pdf(pdf), 415, "unsupported_document"),
        ("scan.pdf", image_only_pdf(), 400, "no_extractable_text"),
        ("broken.docx", (DOCS / "sample.docx").read_bytes()[:900], 415, "unsupported_document"),
        ("broken.epub", b"PK\x03\x04 not really a zip", 415, "unsupported_document"),
        ("empty.odt", b"", 400, "invalid_value"),
    ]
    for name, data, status, code in cases:
        assert_openai_error(upload(grace, name, data), status, code, "file")
    assert grace.get("/api/v1/media").json()["total"] == 0
    assert grace.get("/api/v1/media/embeddings/jobs").json()["total"] == 0
    assert vector_count(client, USERS[9]) == 0
    assert upload(grace, "sample.pdf", pdf).status_code == 201   # and the server still serves
