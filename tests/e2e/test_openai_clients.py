"""The tools people already use, unchanged, against a live server (uvicorn on a free port):
the official `openai` client, LangChain's OpenAIEmbeddings (token-array path) and LlamaIndex's
OpenAI-compatible embedding class. Vectors must equal sentence-transformers on the same texts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from support import ADMIN_KEY, MODEL, LiveServer, cosine_rows, long_document

pytestmark = pytest.mark.live

TEXTS = [
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The stock market fell sharply after the interest rate announcement.",
    "A recipe for sourdough bread needs flour, water, salt and a starter.",
    "naïve café — unicode survives the round trip ✓",
]


@pytest.fixture(scope="module")
def openai_client(live_server: LiveServer) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{live_server.base_url}/api/v1", api_key=ADMIN_KEY, max_retries=0)


def vectors_of(response: Any) -> np.ndarray:
    return np.array([row.embedding for row in response.data], dtype=np.float32)


def test_openai_default_call_uses_base64(openai_client: Any, reference: Any) -> None:
    response = openai_client.embeddings.create(model=MODEL, input=TEXTS)  # client sends encoding_format=base64
    assert response.model == MODEL and [row.index for row in response.data] == [0, 1, 2, 3]
    assert cosine_rows(vectors_of(response), reference(TEXTS)).min() >= 0.9999
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0


def test_openai_float_format(openai_client: Any, reference: Any) -> None:
    response = openai_client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert cosine_rows(vectors_of(response), reference(TEXTS)).min() >= 0.9999


def test_openai_hundred_inputs_keep_their_order(openai_client: Any, reference: Any) -> None:
    texts = [f"document number {i}: " + "lorem ipsum " * (i % 17) for i in range(100)]
    response = openai_client.embeddings.create(model=MODEL, input=texts)
    assert [row.index for row in response.data] == list(range(100))
    assert cosine_rows(vectors_of(response), reference(texts)).min() >= 0.9999


def test_openai_dimensions(openai_client: Any, reference: Any) -> None:
    response = openai_client.embeddings.create(model=MODEL, input=TEXTS, dimensions=128)
    vectors = vectors_of(response)
    assert vectors.shape == (4, 128)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosine_rows(vectors, reference(TEXTS)[:, :128]).min() >= 0.9999


def test_openai_errors_map_to_client_exceptions(openai_client: Any, live_server: LiveServer) -> None:
    import openai

    with pytest.raises(openai.NotFoundError):
        openai_client.embeddings.create(model="no-such-model", input="a")
    with pytest.raises(openai.BadRequestError):
        openai_client.embeddings.create(model=MODEL, input="")
    bad_key = openai.OpenAI(base_url=f"{live_server.base_url}/api/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.embeddings.create(model=MODEL, input="a")
    assert openai_client.embeddings.create(model=MODEL, input="still serving").data


def test_langchain_token_array_path(live_server: LiveServer, reference: Any, tiktoken_dir: Any) -> None:
    from langchain_openai import OpenAIEmbeddings

    # Defaults kept: check_embedding_ctx_length=True makes LangChain send cl100k_base token arrays.
    embeddings = OpenAIEmbeddings(model=MODEL, base_url=f"{live_server.base_url}/api/v1", api_key=ADMIN_KEY)
    documents = np.array(embeddings.embed_documents(TEXTS), dtype=np.float32)
    query = np.array([embeddings.embed_query(TEXTS[0])], dtype=np.float32)
    assert cosine_rows(documents, reference(TEXTS)).min() >= 0.9999
    assert cosine_rows(query, reference(TEXTS[:1]))[0] >= 0.9999


def test_llamaindex_openai_like(live_server: LiveServer, reference: Any) -> None:
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    embedder = OpenAILikeEmbedding(model_name=MODEL, api_base=f"{live_server.base_url}/api/v1", api_key=ADMIN_KEY)
    documents = np.array(embedder.get_text_embedding_batch(TEXTS), dtype=np.float32)
    query = np.array([embedder.get_query_embedding(TEXTS[1])], dtype=np.float32)
    assert cosine_rows(documents, reference(TEXTS)).min() >= 0.9999
    assert cosine_rows(query, reference(TEXTS[1:2]))[0] >= 0.9999


def test_token_arrays_without_cl100k_file_get_a_400_that_says_how(
    tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Any
) -> None:
    import openai
    from langchain_openai import OpenAIEmbeddings
    from support import make_settings

    settings = make_settings(tmp_path_factory.mktemp("no-tiktoken"), tiktoken=None)
    with LiveServer(settings) as server:
        embeddings = OpenAIEmbeddings(model=MODEL, base_url=f"{server.base_url}/api/v1", api_key=ADMIN_KEY,
                                      max_retries=0)
        with pytest.raises(openai.BadRequestError) as caught:
            embeddings.embed_documents(TEXTS)  # proves LangChain sends token arrays by default
        assert "TIKTOKEN_CACHE_DIR" in str(caught.value)
        plain = openai.OpenAI(base_url=f"{server.base_url}/api/v1", api_key=ADMIN_KEY, max_retries=0)
        assert plain.embeddings.create(model=MODEL, input=TEXTS).data  # strings still work


def test_32_concurrent_clients_each_get_their_own_rows(live_server: LiveServer) -> None:
    import asyncio

    import httpx

    rnd = np.random.default_rng(7)
    requests = [[f"request {r} text {t} " + "word " * int(rnd.integers(1, 40)) for t in range(int(rnd.integers(1, 9)))]
                for r in range(32)]
    url = f"{live_server.base_url}/api/v1/embeddings"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def one(client: httpx.AsyncClient, texts: list[str]) -> np.ndarray:
        response = await client.post(url, json={"model": MODEL, "input": texts}, headers=headers)
        assert response.status_code == 200, response.text
        return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)

    async def run() -> tuple[list[np.ndarray], list[np.ndarray]]:
        async with httpx.AsyncClient(timeout=60) as client:
            together = await asyncio.gather(*(one(client, texts) for texts in requests))
            alone = [await one(client, texts) for texts in requests]
        return together, alone

    together, alone = asyncio.run(run())
    for concurrent_rows, single_rows in zip(together, alone, strict=True):
        assert concurrent_rows.shape == single_rows.shape
        assert cosine_rows(concurrent_rows, single_rows).min() >= 0.9999
    health = httpx.get(f"{live_server.base_url}/api/v1/embeddings/health").json()
    provider, precision = health["engine_choice"]["models"][MODEL]["engine"].split(":")   # the bare id's engine
    batchers = health["providers"][provider]["batchers"]
    batcher = batchers.get(MODEL) or batchers[f"{MODEL}@{precision}"]
    assert batcher["batches_run"] > 0 and batcher["recent_batch_sizes"]


def test_langchain_embed_documents_on_a_5000_word_text(live_server: LiveServer, reference: Any) -> None:
    from langchain_openai import OpenAIEmbeddings

    text = long_document(5000)
    embeddings = OpenAIEmbeddings(model=MODEL, base_url=f"{live_server.base_url}/api/v1", api_key=ADMIN_KEY,
                                  max_retries=0)
    vector = np.array(embeddings.embed_documents([text]), dtype=np.float32)
    assert vector.shape == (1, 384) and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-4)
    # LangChain cuts the text into 8,191-token cl100k pieces and averages their vectors; each piece
    # is truncated to the model's window here, so the result leans on the text's start.
    assert cosine_rows(vector, reference([text]))[0] >= 0.9


def test_llamaindex_default_1024_token_chunks(live_server: LiveServer, reference: Any) -> None:
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.openai_like import OpenAILikeEmbedding

    chunks = SentenceSplitter().split_text(long_document(3000))   # LlamaIndex's default: 1024-token chunks
    assert len(chunks) >= 2
    embedder = OpenAILikeEmbedding(model_name=MODEL, api_base=f"{live_server.base_url}/api/v1", api_key=ADMIN_KEY)
    vectors = np.array(embedder.get_text_embedding_batch(chunks), dtype=np.float32)
    assert cosine_rows(vectors, reference(chunks)).min() >= 0.999


def test_truncate_false_still_refuses_through_the_openai_client(openai_client: Any) -> None:
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.embeddings.create(model=MODEL, input=["ok", long_document(600)], extra_body={"truncate": False})
    assert "input[1]" in str(caught.value)
    raw = openai_client.embeddings.with_raw_response.create(model=MODEL, input=["ok", long_document(600)])
    assert raw.headers["X-Embeddings-Truncated"] == "1" and raw.headers["X-Embeddings-Truncated-Inputs"] == "1"
