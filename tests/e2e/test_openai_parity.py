"""OpenAI parity as a new user meets it, with the real `openai` client against a running server:
`models.list()` / `models.retrieve()` under a `/v1` base URL (and `/api/v1`), aliases for tools
that hard-code OpenAI's model names (the response names the model that ran), an unknown model
answered 404 `model_not_found` at once with the served list — also when the hub cannot be reached
(a real server process whose hub endpoint refuses connections) — and unknown paths answered with
an OpenAI-shaped 404 naming the base paths served.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.support import ADMIN_KEY, LiveServer, ServerProcess, free_port, make_settings, write_keys_file
from tests.support import MODEL as BUNDLED_MODEL

ALIAS = "text-embedding-3-small"
USER_KEY = "user-key-parity-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("parity")
    settings = make_settings(
        data, tiktoken_dir, embeddings_model_aliases={ALIAS: BUNDLED_MODEL},
        api_keys_file=write_keys_file(data, {"dana": USER_KEY}),
        embeddings_denied_models=[f"{BUNDLED_MODEL}@int8"], embeddings_enforce_policy=True)
    with LiveServer(settings) as running:
        yield running


def client(server: LiveServer, base: str = "/v1", key: str = ADMIN_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}{base}", api_key=key, max_retries=0)


def test_models_list_and_retrieve_with_a_v1_base_url(server: LiveServer) -> None:
    for base in ("/v1", "/api/v1"):
        models = client(server, base).models.list()
        ids = [m.id for m in models.data]
        assert BUNDLED_MODEL in ids and ALIAS in ids, ids
        assert all(m.object == "model" and isinstance(m.created, int) and m.owned_by for m in models.data)
        assert client(server, base).models.retrieve(BUNDLED_MODEL).id == BUNDLED_MODEL
        assert client(server, base).models.retrieve(ALIAS).owned_by == "alias"
    admin_ids = {m.id for m in client(server).models.list().data}
    user_ids = {m.id for m in client(server, key=USER_KEY).models.list().data}
    assert f"{BUNDLED_MODEL}@int8" in admin_ids and f"{BUNDLED_MODEL}@int8" not in user_ids   # the policy applies
    with pytest.raises(openai.NotFoundError):
        client(server, key=USER_KEY).models.retrieve(f"{BUNDLED_MODEL}@int8")


def test_an_alias_runs_the_served_model_and_the_response_names_it(server: LiveServer) -> None:
    aliased = client(server).embeddings.create(model=ALIAS, input=["the river runs"])
    direct = client(server, "/api/v1").embeddings.create(model=BUNDLED_MODEL, input=["the river runs"])
    assert aliased.model == BUNDLED_MODEL
    assert np.allclose(aliased.data[0].embedding, direct.data[0].embedding, atol=1e-6)


def test_an_unknown_model_is_a_404_at_once_listing_what_is_served(server: LiveServer) -> None:
    started = time.monotonic()
    with pytest.raises(openai.NotFoundError) as caught:
        client(server).embeddings.create(model="text-embedding-ada-002", input=["hi"])
    assert time.monotonic() - started < 1.0
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found", body
    assert BUNDLED_MODEL in body["message"] and ALIAS in body["message"], body


def test_unknown_paths_get_an_openai_404_naming_the_base_paths(server: LiveServer) -> None:
    for path in ("/v1/chat/completions", "/api/v1/nope", "/v1"):
        response = httpx.post(f"{server.base_url}{path}", json={}, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert response.status_code == 404, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "not_found" and "/v1" in error["message"] and "/api/v1" in error["message"], error


def test_with_the_hub_unreachable_an_unknown_hub_model_is_a_404_at_once(tmp_path: Path, tiktoken_dir: Path) -> None:
    closed = free_port()                      # nothing listens: the hub refuses connections
    server = ServerProcess(tmp_path / "data", tiktoken_dir, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0",
                           HF_ENDPOINT=f"http://127.0.0.1:{closed}", AUTO_DOWNLOAD_MODELS="true")
    try:
        time.sleep(0.5)                       # the hub probe runs at start-up
        started = time.monotonic()
        response = server.client.post("/v1/embeddings", json={"model": "someorg/unknown-embedder", "input": "hi"})
        elapsed = time.monotonic() - started
        assert response.status_code == 404, response.text
        error = response.json()["error"]
        assert error["code"] == "model_not_found" and "cannot be reached" in error["message"], error
        assert BUNDLED_MODEL in error["message"], error
        assert elapsed < 1.0
    finally:
        server.stop()


# --- Files API --------------------------------------------------------------------------------------


def test_files_create_list_retrieve_content_delete_with_the_openai_client(server: LiveServer) -> None:
    alice, dana = client(server), client(server, key=USER_KEY)
    data = b"Tidal mills ground grain on the estuary.\n" * 50
    created = alice.files.create(file=("mills.txt", data), purpose="assistants")
    assert created.id.startswith("file-") and created.bytes == len(data) and created.filename == "mills.txt"
    assert created.purpose == "assistants" and created.status == "processed"
    assert alice.files.retrieve(created.id).id == created.id
    assert created.id in [f.id for f in alice.files.list()]
    assert [f.id for f in alice.files.list(purpose="batch")] == []
    assert alice.files.content(created.id).read() == data

    for call in (lambda: dana.files.retrieve(created.id), lambda: dana.files.content(created.id).read(),
                 lambda: dana.files.delete(created.id)):
        with pytest.raises(openai.NotFoundError):                 # isolation: another user's file is absent
            call()
    assert created.id not in [f.id for f in dana.files.list()]

    with pytest.raises(openai.BadRequestError) as bad:
        alice.files.create(file=("x.txt", b"x"), purpose="nonsense")
    assert bad.value.body["param"] == "purpose"                   # type: ignore[index]
    deleted = alice.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(created.id)


def test_a_file_over_the_size_limit_is_a_413(tmp_path: Path, tiktoken_dir: Path) -> None:
    with LiveServer(make_settings(tmp_path, tiktoken_dir, files_max_bytes=1024)) as small:
        with pytest.raises(openai.APIStatusError) as caught:
            client(small).files.create(file=("big.bin", b"x" * 2048), purpose="assistants")
        assert caught.value.status_code == 413
        assert client(small).files.create(file=("ok.bin", b"x" * 1024), purpose="assistants").bytes == 1024


# --- vector store files and file batches --------------------------------------------------------------
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "documents"
LIGHTHOUSE = ("The lighthouse keeper on Skerry Island polished the great lens every morning before dawn. "
              "Ships passing the reef relied on its beam through the winter storms. ") * 6


def test_upload_and_poll_a_text_file_and_a_pdf_then_search_finds_them(server: LiveServer) -> None:
    alice = client(server)
    store = alice.vector_stores.create(name="docs")
    text_file = alice.vector_stores.files.upload_and_poll(vector_store_id=store.id,
                                                          file=("lighthouse.txt", LIGHTHOUSE.encode()))
    assert text_file.status == "completed", text_file.last_error
    assert text_file.chunking_strategy.type == "static"           # type: ignore[union-attr]
    pdf = alice.vector_stores.files.upload_and_poll(vector_store_id=store.id,
                                                    file=("sample.pdf", (FIXTURES / "sample.pdf").read_bytes()),
                                                    chunking_strategy={"type": "static", "static": {
                                                        "max_chunk_size_tokens": 200, "chunk_overlap_tokens": 20}})
    assert pdf.status == "completed", pdf.last_error
    assert pdf.chunking_strategy.static.max_chunk_size_tokens <= 256   # type: ignore[union-attr]  # clamped
    assert alice.vector_stores.retrieve(store.id).file_counts.completed == 2

    results = alice.vector_stores.search(store.id, query="who polished the lens of the lighthouse?")
    top = results.data[0]
    assert top.file_id == text_file.id and top.filename == "lighthouse.txt" and "lens" in top.content[0].text
    assert {f.id for f in alice.vector_stores.files.list(vector_store_id=store.id)} == {text_file.id, pdf.id}

    # deleting the file removes its vectors: it is no longer found
    alice.vector_stores.files.delete(text_file.id, vector_store_id=store.id)
    after = alice.vector_stores.search(store.id, query="who polished the lens of the lighthouse?")
    assert all(r.file_id != text_file.id for r in after.data)
    with pytest.raises(openai.NotFoundError):
        alice.vector_stores.files.retrieve(text_file.id, vector_store_id=store.id)


def test_a_batch_with_one_corrupt_file_counts_it_failed_and_attributes_filter_search(server: LiveServer) -> None:
    alice = client(server)
    store = alice.vector_stores.create(name="batch")
    files = [("a.txt", b"Apples grow in the orchard by the old stone wall."),
             ("b.md", b"# Bees\n\nBees keep the orchard's apple blossoms busy every spring."),
             ("broken.pdf", b"%PDF-1.7 this is not really a pdf")]
    batch = alice.vector_stores.file_batches.upload_and_poll(store.id, files=files)
    assert batch.status in ("completed", "failed")
    counts = batch.file_counts
    assert (counts.completed, counts.failed, counts.total) == (2, 1, 3), counts
    failed = list(alice.vector_stores.files.list(vector_store_id=store.id, filter="failed"))
    assert len(failed) == 1 and failed[0].last_error is not None and failed[0].last_error.code == "invalid_file"

    tagged = alice.files.create(file=("c.txt", b"Cider is pressed from the orchard apples in autumn."),
                                purpose="assistants")
    attached = alice.vector_stores.files.create_and_poll(file_id=tagged.id, vector_store_id=store.id,
                                                         attributes={"season": "autumn"})
    assert attached.status == "completed" and attached.attributes == {"season": "autumn"}
    only = alice.vector_stores.search(store.id, query="apples in the orchard",
                                      filters={"type": "eq", "key": "season", "value": "autumn"})
    assert {r.file_id for r in only.data} == {tagged.id}, only.data


def test_listing_stores_counts_each_stores_files(server: LiveServer) -> None:
    """`GET /vector_stores` gives every store on the page its own file counts (read for the page
    at once, not per file)."""
    alice = client(server)
    one, two = alice.vector_stores.create(name="one"), alice.vector_stores.create(name="two")
    alice.vector_stores.file_batches.upload_and_poll(one.id, files=[
        ("x.txt", b"Kites fly high over the windy beach."), ("y.txt", b"Sandcastles fall to the rising tide."),
        ("z.pdf", b"%PDF-1.7 not a pdf at all")])
    alice.vector_stores.files.upload_and_poll(vector_store_id=two.id, file=("w.txt", b"Gulls circle the pier."))
    listed = {s.id: s.file_counts for s in alice.vector_stores.list(limit=100)}
    assert (listed[one.id].total, listed[one.id].completed, listed[one.id].failed) == (3, 2, 1)
    assert (listed[two.id].total, listed[two.id].completed, listed[two.id].failed) == (1, 1, 0)
    assert listed[one.id] == alice.vector_stores.retrieve(one.id).file_counts


def test_another_users_file_cannot_be_attached(server: LiveServer) -> None:
    alice, dana = client(server), client(server, key=USER_KEY)
    secret = alice.files.create(file=("secret.txt", b"Alice's private notes about the harbour."),
                                purpose="assistants")
    store = dana.vector_stores.create(name="dana")
    with pytest.raises(openai.NotFoundError):
        dana.vector_stores.files.create(vector_store_id=store.id, file_id=secret.id)
    with pytest.raises(openai.NotFoundError):
        dana.vector_stores.file_batches.create(vector_store_id=store.id, file_ids=[secret.id])
    own = alice.vector_stores.create(name="alice")
    with pytest.raises(openai.NotFoundError):
        dana.vector_stores.files.list(vector_store_id=own.id).data   # noqa: B018
