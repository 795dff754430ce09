"""HopExecutor and the cache: a request answered wholly from the cache never asks the provider's
tokenizer (the counts travel with the cached vectors), a partial hit counts only its misses, and
token limits and usage are the same whether an input was a hit or a miss. The provider here is a
small in-test implementation of the provider protocol that counts words and records its calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tldw_Server_API.app.core.config import CacheConfig, EmbeddingsAPIConfig, Settings
from tldw_Server_API.app.core.Embeddings.circuit_breaker import BreakerRegistry
from tldw_Server_API.app.core.Embeddings.embedding_execution import HopExecutor, RequestBudget
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import (
    EmbeddingBatch,
    ModelInfo,
    ResolvedModel,
)
from tldw_Server_API.app.core.Embeddings.metrics_integration import EmbeddingsMetrics
from tldw_Server_API.app.core.Embeddings.multi_tier_cache import MultiTierCache
from tldw_Server_API.app.core.Embeddings.tokenization import TokenArrayDecoder
from tldw_Server_API.app.core.errors import InputTooLong, PayloadTooLarge

MAX_TOKENS = 5


class WordCountingProvider:
    """Tokens are words; the vector of a text is a fixed function of it."""

    name = "recording"

    def __init__(self) -> None:
        self.counted: list[list[str]] = []
        self.embedded: list[list[str]] = []

    def model_info(self, model_id: str) -> ModelInfo:
        return ModelInfo(self.name, model_id, dimension=4, max_tokens=MAX_TOKENS, revision="r1")

    async def count_tokens(self, model_id: str, texts: Sequence[str]) -> list[int]:  # noqa: ARG002
        self.counted.append(list(texts))
        return [len(text.split()) for text in texts]

    async def embed(self, model_id: str, texts: Sequence[str],  # noqa: ARG002
                    token_counts: Sequence[int] | None = None) -> EmbeddingBatch:
        self.embedded.append(list(texts))
        vectors = np.array([[len(t), t.count("a") + 1, t.count("e") + 1, 1.0] for t in texts], dtype=np.float32)
        return EmbeddingBatch(vectors=vectors, token_counts=list(token_counts or [1] * len(texts)))

    def loaded_models(self) -> list[str]:
        return []

    async def health(self) -> dict[str, Any]:
        return {"status": "healthy"}

    async def aclose(self) -> None:
        return None


def make_executor(tmp_path: Path, max_total: int = 100) -> tuple[HopExecutor, WordCountingProvider, ResolvedModel]:
    settings = Settings(tldw_data_dir=tmp_path, log_level="WARNING")
    resilience = settings.resilience_config()
    cache = MultiTierCache(CacheConfig(enabled=True, ttl_s=60, max_size=100, cleanup_interval_s=30, daemon=False,
                                       redis_url=None, redis_prefix="t"))
    executor = HopExecutor(
        EmbeddingsAPIConfig(max_inputs=100, max_tokens_per_request=max_total, dimension_policy="reduce",
                            truncate=False),
        TokenArrayDecoder(None), EmbeddingsMetrics(CollectorRegistry()), BreakerRegistry(resilience.breaker),
        resilience.retry, cache, None,
    )
    provider = WordCountingProvider()
    return executor, provider, ResolvedModel(provider, provider.model_info("m"))


def run(executor: HopExecutor, resolved: ResolvedModel, texts: list[str], truncate: bool | None = None) -> Any:
    return asyncio.run(executor.run(resolved, texts, None, truncate, RequestBudget("u", exempt=True)))


def test_a_full_hit_never_counts_tokens_and_reports_the_same_usage(tmp_path: Path) -> None:
    executor, provider, resolved = make_executor(tmp_path)
    first = run(executor, resolved, ["one two", "three four five"])
    assert first.cache == "miss" and first.tokens == 5 and len(provider.counted) == 1
    again = run(executor, resolved, ["three four five", "one two"])
    assert again.cache == "hit" and again.tokens == 5
    assert len(provider.counted) == 1 and len(provider.embedded) == 1   # neither tokenizer nor model
    assert np.array_equal(again.vectors[0], first.vectors[1]) and np.array_equal(again.vectors[1], first.vectors[0])


def test_a_partial_hit_counts_and_embeds_only_its_misses(tmp_path: Path) -> None:
    executor, provider, resolved = make_executor(tmp_path)
    run(executor, resolved, ["alpha beta"])
    mixed = run(executor, resolved, ["gamma", "alpha beta", "delta epsilon zeta"])
    assert mixed.cache == "partial" and mixed.tokens == 1 + 2 + 3
    assert provider.counted[-1] == ["gamma", "delta epsilon zeta"]
    assert provider.embedded[-1] == ["gamma", "delta epsilon zeta"]


def test_token_limits_hold_for_cached_inputs(tmp_path: Path) -> None:
    executor, provider, resolved = make_executor(tmp_path, max_total=8)
    long_text = "w " * 7   # 7 tokens, over the model's 5
    truncated = run(executor, resolved, [long_text], truncate=True)
    assert truncated.tokens == MAX_TOKENS and truncated.truncated == (0,)
    hit = run(executor, resolved, ["short", long_text], truncate=True)
    assert hit.cache == "partial" and hit.truncated == (1,)   # a cache hit still knows it was cut
    with pytest.raises(InputTooLong):   # the cache remembers the real count, not the truncated one
        run(executor, resolved, [long_text], truncate=False)
    with pytest.raises(PayloadTooLarge):   # 5 + 5 effective tokens > 8, all from the cache
        run(executor, resolved, [long_text, long_text], truncate=True)
    assert provider.counted == [[long_text], ["short"]]   # the long text was counted once
