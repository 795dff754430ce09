"""The synchronous embeddings service behind `POST /api/v1/embeddings` and its admin routes.

One call per request: normalise input -> policy -> fallback plan; per hop: model resolution ->
token limits -> cache (only misses go on) -> rate limit -> breaker + retries -> provider -> vector
checks -> normalise -> cache fill -> dimension policy -> encode. A hop that fails transiently (5xx,
429, network, open circuit) hands the whole request to the next provider of the chain, so one
response never mixes providers. Raises domain errors only; the API layer translates them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from loguru import logger

from tldw_Server_API.app.core.AuthNZ.api_keys import User
from tldw_Server_API.app.core.Chunking import OffsetsTokenizer
from tldw_Server_API.app.core.config import EmbeddingsAPIConfig
from tldw_Server_API.app.core.Embeddings.chunk_windows import ModelWindow, ModelWindows, split_long_inputs
from tldw_Server_API.app.core.Embeddings.embedding_execution import HopExecutor, HopResult, RequestBudget, resolve_hop
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import (
    KNOWN_PROVIDERS,
    ModelListing,
    ProviderRegistry,
    ResolvedModel,
    without_variant,
)
from tldw_Server_API.app.core.Embeddings.input_processing import (
    InputItem,
    encode_base64,
    normalize_input,
    parse_model_name,
    pool_pieces,
)
from tldw_Server_API.app.core.Embeddings.metrics_integration import EmbeddingsMetrics
from tldw_Server_API.app.core.Embeddings.policy import EmbeddingPolicy
from tldw_Server_API.app.core.Embeddings.rate_limiter import Decision
from tldw_Server_API.app.core.errors import (
    CircuitOpenError,
    InvalidInput,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    ProviderNotImplemented,
    ProviderTransientError,
    RateLimited,
    ServiceUnavailable,
    TLDWError,
)

EncodingFormat = Literal["float", "base64"]
LongInput = Literal["truncate", "mean"]
CacheStatus = Literal["hit", "miss", "partial"]
_FALLBACK_ERRORS = (ProviderTransientError, CircuitOpenError)


@dataclass(frozen=True)
class EmbeddingCall:
    input: Any
    model: str
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None
    user: str | None = None
    truncate: bool | None = None
    provider_header: str | None = None       # `x-provider`: pins the provider (and turns fallback off)
    long_input: LongInput | None = None      # None: EMBEDDINGS_LONG_INPUT


@dataclass(frozen=True)
class TextEmbeddings:
    """Vectors for internal callers (media ingestion, RAG queries, vector stores)."""

    vectors: np.ndarray      # (n, d) float32, L2-normalised
    provider: str
    model_id: str            # the resolved id, as stored beside the vectors
    dimension: int
    truncated: tuple[int, ...] = ()   # indexes of texts longer than the model's window


@dataclass(frozen=True)
class EmbeddingOutcome:
    model: str                                # the id the caller sent
    provider: str                             # the provider that produced every row
    embeddings: list[np.ndarray] | list[str]  # float32 rows, or base64 strings
    prompt_tokens: int
    cache: CacheStatus = "miss"
    fallback_from: str | None = None
    rate_limit: Decision | None = None
    truncated: tuple[int, ...] = ()           # inputs cut to the model's window
    pooled: tuple[int, ...] = ()              # inputs embedded as the mean of their pieces
    engine: str = ""                          # local models: `provider:precision` that ran

    @property
    def input_count(self) -> int:
        return len(self.embeddings)


class EmbeddingService:
    def __init__(
        self,
        registry: ProviderRegistry,
        config: EmbeddingsAPIConfig,
        executor: HopExecutor,
        policy: EmbeddingPolicy,
        metrics: EmbeddingsMetrics,
    ) -> None:
        self.registry = registry
        self._config = config
        self._executor = executor
        self._policy = policy
        self._metrics = metrics
        self.started_at = int(time.time())   # the `created` of listed models (OpenAI's field)
        self._windows = ModelWindows(registry)

    def window(self, model: str | None) -> ModelWindow:
        """The window of a model (the default when None) and a tokenizer that counts as it does.
        May load a tokenizer: call it off the event loop."""
        return self._windows.window(model or self.registry.default_model)

    def tokenizer_for(self, provider: str, model_id: str) -> OffsetsTokenizer:
        """The tokenizer that cuts `tokens` chunks for a model (sync: call it off the event loop)."""
        return self.window(f"{provider}:{model_id}").tokenizer

    @property
    def executor(self) -> HopExecutor:
        return self._executor

    # --- POST /embeddings ---------------------------------------------------------------------
    async def create_embeddings(self, call: EmbeddingCall, user: User) -> EmbeddingOutcome:
        alias = self._config.aliases.get(call.model or "")
        if alias is not None:
            call = replace(call, model=alias)
        try:
            try:
                outcome = await self._create(call, user)
            except ModelNotFound as exc:
                raise self.with_served_models(exc, user) from None
        except TLDWError as exc:
            self._metrics.api_requests.labels(exc.code).inc()
            if isinstance(exc, RateLimited):
                self._metrics.rate_limited.inc()
            raise
        self._metrics.api_requests.labels("ok").inc()
        return outcome

    async def _create(self, call: EmbeddingCall, user: User) -> EmbeddingOutcome:
        items = normalize_input(call.input, max_inputs=self._config.max_inputs)
        provider_name, model_id = self._requested_model(call)
        try:
            self._policy.check(provider_name, model_id, is_admin=user.is_admin)
        except PermissionDenied:
            self._metrics.policy_denials.labels(provider_name).inc()
            raise
        hops = self._policy.fallback_plan(provider_name, model_id,
                                          pinned_by_header=call.provider_header is not None)
        failures: list[TLDWError] = []
        budget = RequestBudget(user.id)
        for position, hop in enumerate(hops):
            resolved = resolve_hop(self.registry, hop, model_id, first=position == 0)
            if resolved is None or not self._policy.allowed(hop.provider, resolved.info.model_id,
                                                            is_admin=user.is_admin):
                continue
            try:
                result = await self._run_hop(resolved, items, call, budget)
            except _FALLBACK_ERRORS as exc:
                if len(hops) == 1:
                    raise
                failures.append(exc)
                self._metrics.fallbacks.labels(hop.provider).inc()
                logger.warning("embeddings: provider {} failed ({}); trying the next in its chain",
                               hop.provider, exc.code)
                continue
            except InvalidInput:
                if position == 0:
                    raise
                continue  # e.g. the fallback model's token limit: try the next hop
            return self._outcome(call, result, fallback_from=provider_name if position else None)
        raise ServiceUnavailable(
            f"every provider for '{call.model}' failed ({', '.join(h.provider for h in hops)}); retry later",
            retry_after=_retry_after(failures), code="all_providers_failed",
        )

    async def _run_hop(self, resolved: ResolvedModel, items: list[InputItem], call: EmbeddingCall,
                       budget: RequestBudget) -> HopResult:
        """One hop; in the `mean` long-input mode, long inputs become the pooled vectors of their
        window-sized pieces (pieces are embedded, cached and counted like inputs)."""
        if (call.long_input or self._config.long_input) != "mean":
            return await self._executor.run(resolved, items, call.dimensions, call.truncate, budget)
        window = await asyncio.to_thread(self.window, f"{resolved.provider.name}:{resolved.info.model_id}")
        plan = await asyncio.to_thread(split_long_inputs, self._executor.texts_of(items), window)
        result = await self._executor.run(resolved, plan.pieces, call.dimensions, True, budget)
        vectors = pool_pieces(result.vectors, plan.groups, plan.weights)
        return replace(result, vectors=vectors, truncated=plan.owners(result.truncated), pooled=plan.pooled)

    def _requested_model(self, call: EmbeddingCall) -> tuple[str, str]:
        """(provider, model id) a request names: the `x-provider` header or a `provider:` prefix
        pins the provider; a bare id goes where the registry routes it (the engine choice)."""
        parsed = parse_model_name(call.model)
        pinned = (call.provider_header or "").strip().lower() or parsed.provider
        name, model_id = (pinned, parsed.model_id) if pinned else self.registry.route(parsed.model_id)
        self.registry.get(name)  # unknown -> 400, not built here -> 501, before any policy or work
        return name, model_id

    def _outcome(self, call: EmbeddingCall, result: HopResult, fallback_from: str | None) -> EmbeddingOutcome:
        rows: list[np.ndarray] | list[str] = (
            [encode_base64(v) for v in result.vectors] if call.encoding_format == "base64" else list(result.vectors)
        )
        return EmbeddingOutcome(
            model=call.model, provider=result.provider, embeddings=rows, prompt_tokens=result.tokens,
            cache=result.cache, fallback_from=fallback_from, rate_limit=result.rate_limit,
            truncated=result.truncated, pooled=result.pooled, engine=result.engine,
        )

    # --- internal callers ---------------------------------------------------------------------
    async def embed_texts(
        self, model: str, texts: list[str], user: User | None, *, truncate: bool = True
    ) -> TextEmbeddings:
        """One provider, no fallback (stored vectors must never mix models), no rate limit. The
        policy applies to `user`; None means the call was authorized earlier (a queued job).
        Long texts are truncated to the model's window by default."""
        resolved = self.registry.resolve(model)
        if user is not None:
            self._policy.check(resolved.provider.name, resolved.info.model_id, is_admin=user.is_admin)
        if not texts:
            raise InvalidInput("nothing to embed", param="input")
        budget = RequestBudget(user.id if user else "internal", exempt=True)
        result = await self._executor.run(resolved, texts, None, truncate, budget)
        vectors = np.stack(result.vectors).astype(np.float32, copy=False)
        return TextEmbeddings(vectors, result.provider, resolved.info.model_id, int(vectors.shape[1]),
                              result.truncated)

    def resolve_model(self, model: str | None) -> tuple[str, str]:
        """(provider, model id) of a model name, the default model when None; errors as for requests."""
        resolved = self.registry.resolve(model or self.registry.default_model)
        return resolved.provider.name, resolved.info.model_id

    def authorize(self, model: str | None, user: User) -> tuple[str, str, int | None]:
        """Resolve a model for stored vectors and apply the policy: (provider, model id, dimension)."""
        resolved = self.registry.resolve(model or self.registry.default_model)
        self._policy.check(resolved.provider.name, resolved.info.model_id, is_admin=user.is_admin)
        return resolved.provider.name, resolved.info.model_id, resolved.info.dimension

    # --- models and health --------------------------------------------------------------------
    def list_models(self) -> list[ModelListing]:
        return self.registry.listings()

    def served_models(self, user: User) -> list[tuple[str, ModelListing | None]]:
        """(the id a client sends, its listing) of every model the caller may use: the catalog's
        available models (a bare id where it reaches that engine, else `provider:model`), then
        the aliases (listing None)."""
        served: list[tuple[str, ModelListing | None]] = []
        for bare_id in self.registry.bare_local_models():   # the bare ids, on the engine each runs on
            chosen = self.registry.bare_engine(bare_id)
            if chosen is None:
                continue
            try:
                row = self.registry.listing(chosen)
            except TLDWError:
                continue
            if self._policy.allowed(row.info.provider, bare_id, is_admin=user.is_admin):
                served.append((bare_id, row))
        for row in self.registry.listings():
            provider, model_id = row.info.provider, row.info.model_id
            if not row.available or not self._policy.allowed(provider, model_id, is_admin=user.is_admin):
                continue
            try:
                bare = self.registry.resolve(model_id).provider.name == provider
            except TLDWError:
                bare = False
            served.append((model_id if bare else f"{provider}:{model_id}", row))
        served += [(alias, None) for alias in self._config.aliases]
        return list({name: (name, row) for name, row in served}.values())

    def with_served_models(self, exc: ModelNotFound, user: User) -> ModelNotFound:
        """The same 404 with the models this server serves the caller, so a typo is one look away."""
        if exc.code != "model_not_found":
            return exc
        names = [name for name, _ in self.served_models(user)]
        shown = ", ".join(names[:20]) + (f" (+{len(names) - 20} more)" if len(names) > 20 else "")
        return ModelNotFound(f"{exc.message}. This server serves: {shown or 'no model'} (GET /v1/models)",
                             param=exc.param, code=exc.code)

    def served_model(self, name: str, user: User) -> tuple[str, ModelListing | None]:
        """One model the caller may use by the id `GET /models` lists; 404 with the list else."""
        for served, row in self.served_models(user):
            if served == name or (row is not None and name in (row.info.model_id, f"{row.info.provider}:"
                                                                                  f"{row.info.model_id}")):
                return served, row
        raise self.with_served_models(ModelNotFound(f"The model `{name[:200]}` is not served here", param="model"),
                                      user)

    def get_model(self, model_id: str) -> ModelListing:
        return self.registry.listing(model_id)

    async def health(self) -> dict[str, Any]:
        providers = {name: await p.health() for name, p in self.registry.providers.items()}
        loaded = [f"{name}:{m}" for name, p in self.registry.providers.items() for m in p.loaded_models()]
        breakers = self._executor.breakers.snapshot()
        unhealthy = any(state.get("status") not in ("healthy", "unconfigured") for state in providers.values())
        open_circuit = any(b.get("state") == "open" for b in breakers.values())
        return {
            "status": "degraded" if unhealthy or open_circuit else "healthy",
            "providers": providers,
            "loaded_models": loaded,
            "circuit_breakers": breakers,
            "cache": self._executor.cache_stats(),
            "engine_choice": self.registry.engine_report(),
        }

    async def preload(self, models: tuple[str, ...] | list[str]) -> None:
        """PRELOAD_EMBEDDING_MODELS: first measure the engines of the catalog's bare local ids not
        measured on this machine yet (EMBEDDINGS_ENGINE=auto), then load and warm each model at
        startup, and the engine a preloaded model's bare id runs on (what clients name: a pinned
        `onnx:<id>@fp32` preloads `<id>`'s engine too; warming primes it); a failure is
        logged, not fatal. Nothing to preload: nothing is measured or warmed either."""
        if models:
            bare = [*self.registry.bare_local_models(), *(m for m in models if ":" not in m)]
            await self.registry.measure_engines(bare)
            bases: set[str] = set()
            for model in models:
                try:
                    bases.add(without_variant(parse_model_name(model).model_id))
                except TLDWError:   # a malformed entry: its warm-up below says so
                    continue
            models = list(dict.fromkeys([*models, *(m for m in bare
                                                    if m in bases and self.registry.bare_engine(m) is not None)]))
        for model in models:
            try:
                await self.warmup(model)
                logger.info("embeddings: preloaded {}", model)
            except TLDWError as exc:
                logger.warning("embeddings: could not preload {}: {}", model, exc.message)

    async def aclose(self) -> None:
        await self._executor.aclose()
        await self.registry.aclose()

    # --- admin ----------------------------------------------------------------------------------
    async def warmup(self, model: str) -> dict[str, Any]:
        resolved = self.registry.resolve(model)
        warm = getattr(resolved.provider, "warmup", None)
        if warm is None:
            raise InvalidInput(f"provider '{resolved.provider.name}' has no local models to warm up", param="model")
        await warm(resolved.info.model_id)
        return {"model": resolved.info.model_id, "provider": resolved.provider.name, "status": "ready"}

    async def download(self, model: str) -> dict[str, Any]:
        parsed = parse_model_name(model)
        provider = self.registry.get(parsed.provider or self.registry.provider_for(parsed.model_id))
        fetch = getattr(provider, "download", None)
        if fetch is None:
            raise InvalidInput(f"provider '{provider.name}' does not download models", param="model")
        fetched = await fetch(parsed.model_id)
        source = getattr(fetched, "source", None) or str(fetched)
        return {"model": parsed.model_id, "provider": provider.name, "status": "downloaded", "source": source}

    async def clear_cache(self) -> int:
        return await self._executor.clear_cache()

    def circuit_breakers(self) -> dict[str, Any]:
        return self._executor.breakers.snapshot()

    def reset_circuit_breaker(self, provider: str) -> dict[str, Any]:
        if provider not in KNOWN_PROVIDERS:
            raise NotFound(f"unknown provider '{provider}'", param="provider", code="provider_not_found")
        try:
            self.registry.get(provider)
        except ProviderNotImplemented as exc:
            raise NotFound(f"provider '{provider}' is not available on this server", param="provider") from exc
        self._executor.breakers.get(provider).reset()  # never called yet: created closed, not a 404
        return self._executor.breakers.snapshot().get(provider, {"state": "closed"})

    def metrics_snapshot(self) -> dict[str, Any]:
        return {**self._metrics.snapshot(), "cache": self._executor.cache_stats()}


def _retry_after(failures: list[TLDWError]) -> float:
    hints = [getattr(f, "retry_after", None) for f in failures]
    known = [h for h in hints if h is not None]
    return min(known) if known else 5.0
