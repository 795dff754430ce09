"""One hop of an embeddings request: a resolved provider + model embeds every input of the request.

Order: dimension check -> per-text cache lookup -> token counting of the misses (a hit carries
its count) -> token limits over every input -> rate limit (only when something must be computed)
-> circuit breaker around each attempt, retries around that -> provider -> vector checks -> L2
normalisation -> cache fill -> dimension policy. A request answered wholly from the cache never
leaves the event loop. The caller
(`embedding_service`) owns policy and fallback between hops. Raises domain errors only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tldw_Server_API.app.core.config import EmbeddingsAPIConfig, RetryConfig
from tldw_Server_API.app.core.Embeddings.circuit_breaker import BreakerRegistry
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import (
    EmbeddingBatch,
    EmbeddingProvider,
    ProviderRegistry,
    ResolvedModel,
)
from tldw_Server_API.app.core.Embeddings.input_processing import (
    InputItem,
    apply_dimensions,
    check_dimensions,
    check_token_limits,
    l2_normalize,
    validate_vectors,
)
from tldw_Server_API.app.core.Embeddings.metrics_integration import EmbeddingsMetrics
from tldw_Server_API.app.core.Embeddings.multi_tier_cache import (
    CachedEmbedding,
    MultiTierCache,
    cache_key,
    cached_embedding,
)
from tldw_Server_API.app.core.Embeddings.policy import Hop
from tldw_Server_API.app.core.Embeddings.rate_limiter import Decision, RateLimiterProtocol
from tldw_Server_API.app.core.Embeddings.retries import call_with_retries
from tldw_Server_API.app.core.Embeddings.tokenization import TokenArrayDecoder
from tldw_Server_API.app.core.errors import TLDWError
from tldw_Server_API.app.core.tracing import span

CacheStatus = Literal["hit", "miss", "partial"]


@dataclass
class RequestBudget:
    """Per-request state shared by its hops: the rate limit is charged once, on first real work."""

    user_id: str
    decision: Decision | None = None
    exempt: bool = False          # internal work (media ingestion, RAG queries) is not rate limited


@dataclass(frozen=True)
class HopResult:
    provider: str
    vectors: list[np.ndarray]      # normalised, dimension policy applied, input order
    tokens: int
    cache: CacheStatus
    rate_limit: Decision | None
    truncated: tuple[int, ...] = ()   # indexes of inputs longer than the model's window (cut to it)
    pooled: tuple[int, ...] = ()      # indexes of inputs pooled from window-sized pieces (`mean`)
    engine: str = ""                  # local models: `provider:precision` that computed them


def resolve_hop(registry: ProviderRegistry, hop: Hop, requested_model: str, *, first: bool) -> ResolvedModel | None:
    """The first hop resolves strictly (its errors reach the caller). A fallback hop resolves to
    its mapped model, else the requested id when that provider's catalog offers it, else its
    default models; never anything that would start a download. None: skip this hop."""
    if first:
        return registry.resolve(f"{hop.provider}:{hop.model}")
    provider = registry.providers.get(hop.provider)
    if provider is None:
        return None
    catalog = registry.default_models_for(hop.provider)
    candidates = [hop.model] if hop.model else [m for m in (requested_model, *catalog) if m in catalog]
    for model_id in candidates:
        try:
            return ResolvedModel(provider=provider, info=provider.model_info(model_id))
        except TLDWError:
            continue
    return None


class HopExecutor:
    def __init__(
        self,
        config: EmbeddingsAPIConfig,
        decoder: TokenArrayDecoder,
        metrics: EmbeddingsMetrics,
        breakers: BreakerRegistry,
        retry: RetryConfig,
        cache: MultiTierCache | None,
        rate_limiter: RateLimiterProtocol | None,
    ) -> None:
        self._config = config
        self._decoder = decoder
        self._metrics = metrics
        self.breakers = breakers
        self._retry = retry
        self._cache = cache
        self._limiter = rate_limiter

    def _inputs_for(self, provider: EmbeddingProvider | None, items: Sequence[InputItem]) -> list[InputItem]:
        """The inputs as `provider` takes them: token arrays decoded to text unless it takes them
        (None: always decoded)."""
        if provider is not None and getattr(provider, "accepts_token_arrays", False):
            return list(items)
        return [
            item if isinstance(item, str) else self._decoder.decode(item, param=f"input[{i}]")
            for i, item in enumerate(items)
        ]

    def texts_of(self, items: Sequence[InputItem]) -> list[str]:
        return self._inputs_for(None, items)  # type: ignore[return-value]

    async def run(
        self, resolved: ResolvedModel, items: Sequence[InputItem], dimensions: int | None,
        truncate: bool | None, budget: RequestBudget,
    ) -> HopResult:
        provider, info = resolved.provider, resolved.info
        inputs = self._inputs_for(provider, items)
        native = bool(dimensions) and bool(getattr(provider, "native_dimensions", lambda _m: False)(info.model_id))
        if info.dimension is not None and not native:
            check_dimensions(dimensions, native=info.dimension, policy=self._config.dimension_policy)
        width_tag = f"#d{dimensions}" if native else ""
        keys = [cache_key(provider.name, info.model_id + width_tag, info.revision, item) for item in inputs]
        with span("embeddings.cache", inputs=len(keys), enabled=self._cache is not None) as lookup:
            cached = await self._cache.get_many(keys) if self._cache is not None else {}
            lookup.set_attribute("hits", len(cached))
        misses = [i for i in range(len(inputs)) if i not in cached]
        raw_counts = await self._token_counts(provider, info.model_id, inputs, cached, misses)
        counts = None if raw_counts is None else check_token_limits(
            raw_counts, max_tokens=info.max_tokens, truncate=self._config.truncate if truncate is None else truncate,
            max_total=self._config.max_tokens_per_request)
        truncated = tuple(i for i, (raw, used) in enumerate(zip(raw_counts or (), counts or (), strict=True))
                          if used < raw)
        vectors: dict[int, np.ndarray] = {i: entry.vector for i, entry in cached.items()}
        miss_tokens = 0
        if misses:
            await self._charge(budget)
            with span("provider.embed", provider=provider.name, model=info.model_id, inputs=len(misses)):
                fresh, miss_tokens = await self._compute(resolved, [inputs[i] for i in misses],
                                                         [counts[i] for i in misses] if counts else None,
                                                         dimensions if native else None)
            vectors.update(zip(misses, fresh, strict=True))
            if self._cache is not None:
                await self._cache.set_many({keys[i]: cached_embedding(vectors[i], raw_counts[i] if raw_counts else None)
                                            for i in misses})
        ordered = np.stack([vectors[i] for i in range(len(inputs))])
        if not native:
            ordered, adjusted = apply_dimensions(ordered, dimensions, policy=self._config.dimension_policy)
            if adjusted:
                self._metrics.dimension_adjustments.labels(self._config.dimension_policy).inc()
        hit_tokens = sum(counts[i] for i in cached) if counts else 0
        status: CacheStatus = "hit" if not misses else ("miss" if not cached else "partial")
        self._metrics.record_cache(len(cached), len(misses))
        return HopResult(provider.name, list(ordered), hit_tokens + miss_tokens, status, budget.decision, truncated,
                         engine=info.engine)

    @staticmethod
    async def _token_counts(
        provider: EmbeddingProvider, model_id: str, inputs: Sequence[InputItem],
        cached: dict[int, CachedEmbedding], misses: list[int],
    ) -> list[int] | None:
        """Each input's token count: a hit's from its cache entry, the misses' from the provider
        (which is not asked when everything hit); None when the provider does not count."""
        texts = [inputs[i] for i in misses]   # token arrays reach only providers that count them upstream
        counted = await provider.count_tokens(model_id, texts) if misses else []  # type: ignore[arg-type]
        if counted is None:
            return None
        by_index: dict[int, int | None] = dict(zip(misses, counted, strict=True))
        counts = [by_index[i] if i in by_index else cached[i].tokens for i in range(len(inputs))]
        known = [c for c in counts if c is not None]
        return known if len(known) == len(counts) else None

    async def _charge(self, budget: RequestBudget) -> None:
        if self._limiter is not None and budget.decision is None and not budget.exempt:
            budget.decision = await self._limiter.enforce(budget.user_id)

    async def _compute(
        self, resolved: ResolvedModel, inputs: list[InputItem], counts: list[int] | None, dimensions: int | None
    ) -> tuple[np.ndarray, int]:
        provider, info = resolved.provider, resolved.info
        breaker = self.breakers.get(provider.name)
        kwargs: dict[str, Any] = {"dimensions": dimensions} if dimensions else {}

        async def attempt() -> EmbeddingBatch:
            return await breaker.call(lambda: provider.embed(info.model_id, inputs, counts, **kwargs))  # type: ignore[arg-type]

        started = time.perf_counter()
        try:
            batch = await call_with_retries(attempt, self._retry,
                                            on_retry=lambda *_: self._metrics.retries.labels(provider.name).inc())
            expected = dimensions or info.dimension
            checked = validate_vectors(batch.vectors, expected_rows=len(inputs), expected_dim=expected)
        except TLDWError:
            self._metrics.record_failure(provider.name, info.model_id)
            raise
        tokens = sum(batch.token_counts)
        self._metrics.record_success(provider.name, info.model_id, len(inputs), tokens,
                                     time.perf_counter() - started)
        return l2_normalize(checked), tokens

    def cache_stats(self) -> dict[str, Any]:
        if self._cache is None:
            return {"enabled": False}
        return {"enabled": True, **self._cache.stats()}

    async def aclose(self) -> None:
        if self._cache is not None:
            await self._cache.aclose()
        if self._limiter is not None:
            await self._limiter.aclose()

    async def clear_cache(self) -> int:
        return await self._cache.clear() if self._cache is not None else 0
