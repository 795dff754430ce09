"""The synchronous embeddings service behind `POST /api/v1/embeddings`.

One call per request: normalise input -> resolve model -> count tokens and check limits -> embed
-> validate vectors -> L2-normalise -> dimension policy -> encode. Raises domain errors only; the
API layer translates them. Later layers (cache, rate limits, breaker, fallback) wrap `_embed`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tldw_Server_API.app.core.config import EmbeddingsAPIConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import (
    ModelListing,
    ProviderRegistry,
)
from tldw_Server_API.app.core.Embeddings.input_processing import (
    apply_dimensions,
    check_dimensions,
    check_token_limits,
    encode_base64,
    l2_normalize,
    normalize_input,
    validate_vectors,
)
from tldw_Server_API.app.core.Embeddings.metrics_integration import EmbeddingsMetrics
from tldw_Server_API.app.core.Embeddings.tokenization import TokenArrayDecoder
from tldw_Server_API.app.core.errors import TLDWError

EncodingFormat = Literal["float", "base64"]


@dataclass(frozen=True)
class EmbeddingCall:
    input: Any
    model: str
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None
    user: str | None = None
    truncate: bool | None = None


@dataclass(frozen=True)
class EmbeddingOutcome:
    model: str                                # the id the caller sent
    provider: str
    embeddings: list[np.ndarray] | list[str]  # float32 rows, or base64 strings
    prompt_tokens: int

    @property
    def input_count(self) -> int:
        return len(self.embeddings)


class EmbeddingService:
    def __init__(
        self,
        registry: ProviderRegistry,
        config: EmbeddingsAPIConfig,
        decoder: TokenArrayDecoder,
        metrics: EmbeddingsMetrics,
    ) -> None:
        self.registry = registry
        self._config = config
        self._decoder = decoder
        self._metrics = metrics

    def _texts(self, raw: Any) -> list[str]:
        items = normalize_input(raw, max_inputs=self._config.max_inputs)
        return [
            item if isinstance(item, str) else self._decoder.decode(item, param=f"input[{i}]")
            for i, item in enumerate(items)
        ]

    async def create_embeddings(self, call: EmbeddingCall) -> EmbeddingOutcome:
        texts = self._texts(call.input)
        resolved = self.registry.resolve(call.model)
        provider, info = resolved.provider, resolved.info
        if info.dimension is not None:
            check_dimensions(call.dimensions, native=info.dimension, policy=self._config.dimension_policy)
        truncate = self._config.truncate if call.truncate is None else call.truncate
        counts = await provider.count_tokens(info.model_id, texts)
        if counts is not None:
            counts = check_token_limits(counts, max_tokens=info.max_tokens, truncate=truncate,
                                        max_total=self._config.max_tokens_per_request)
        started = time.perf_counter()
        try:
            batch = await provider.embed(info.model_id, texts, counts)
            vectors = validate_vectors(batch.vectors, expected_rows=len(texts), expected_dim=info.dimension)
        except TLDWError:
            self._metrics.record_failure(provider.name, info.model_id)
            raise
        vectors, adjusted = apply_dimensions(
            l2_normalize(vectors), call.dimensions, policy=self._config.dimension_policy
        )
        if adjusted:
            self._metrics.dimension_adjustments.labels(self._config.dimension_policy).inc()
        tokens = sum(batch.token_counts)
        self._metrics.record_success(provider.name, info.model_id, len(texts), tokens,
                                     time.perf_counter() - started)
        rows: list[np.ndarray] | list[str] = (
            [encode_base64(v) for v in vectors] if call.encoding_format == "base64" else list(vectors)
        )
        return EmbeddingOutcome(model=call.model, provider=provider.name, embeddings=rows, prompt_tokens=tokens)

    def list_models(self) -> list[ModelListing]:
        return self.registry.listings()

    def get_model(self, model_id: str) -> ModelListing:
        return self.registry.listing(model_id)

    async def health(self) -> dict[str, Any]:
        providers = {name: await p.health() for name, p in self.registry.providers.items()}
        loaded = [f"{name}:{m}" for name, p in self.registry.providers.items() for m in p.loaded_models()]
        degraded = any(state.get("status") != "healthy" for state in providers.values())
        return {"status": "degraded" if degraded else "healthy", "providers": providers, "loaded_models": loaded}
