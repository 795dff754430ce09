"""`openai` and `local_api` providers: any OpenAI-compatible `POST {base_url}/embeddings` over the
pooled aiohttp session of `connection_pool.py`, base64 on the wire, inputs split into upstream
requests of at most `max_batch_size` and reassembled by each row's `index`.

Exactly one attempt per upstream call: retries and the circuit breaker wrap `embed` in another
layer, which retries `ProviderTransientError` only. Messages and logs carry status codes and
upstream request ids, never an upstream body or the API key. Imports aiohttp, never the API layer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import aiohttp
import numpy as np
from loguru import logger

from tldw_Server_API.app.core.config import EngineConfig, RemoteAPIConfig
from tldw_Server_API.app.core.Embeddings.connection_pool import HTTPSessionPool
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.provider_types import EmbeddingBatch, ModelInfo
from tldw_Server_API.app.core.errors import (
    InvalidInput,
    ProviderError,
    ProviderNotImplemented,
    ProviderTransientError,
    UpstreamRejectedRequest,
)

InputItem = str | list[int]
T = TypeVar("T")

# OpenAI's published embedding models: native width and per-input token limit.
OPENAI_MODELS: dict[str, tuple[int, int]] = {
    "text-embedding-3-small": (1536, 8191),
    "text-embedding-3-large": (3072, 8191),
    "text-embedding-ada-002": (1536, 8191),
}


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --- pure helpers ----------------------------------------------------------------------------
def redact_url(url: str) -> str:
    """`scheme://host[:port]/path` only: user info, query and fragment may hold credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}"


def parse_retry_after(retry_after: str | None, retry_after_ms: str | None, *, now: datetime) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI's) or `Retry-After` (delta-seconds or an
    HTTP date, relative to `now`); None when absent or unparseable, never negative."""
    for value, scale in ((retry_after_ms, 1000.0), (retry_after, 1.0)):
        if value is None:
            continue
        try:
            seconds = float(value.strip()) / scale
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds):
            return max(0.0, seconds)
    if retry_after is None:
        return None
    try:
        when = parsedate_to_datetime(retry_after.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 7231 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def estimate_tokens(item: InputItem) -> int:
    """Token arrays count exactly; text is estimated at ~4 characters per token."""
    if isinstance(item, list):
        return max(1, len(item))
    return max(1, (len(item) + 3) // 4)


def apportion_tokens(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` over inputs in proportion to `weights` (largest-remainder method, ties to the
    lower index): the parts are integers, sum to `total` exactly, and each is within one of its
    exact share. Used to spread the upstream `usage.prompt_tokens` over the inputs."""
    if not weights:
        return []
    clean = [max(1, int(w)) for w in weights]
    whole = sum(clean)
    shares = [total * w for w in clean]
    parts = [s // whole for s in shares]
    leftover = total - sum(parts)
    by_remainder = sorted(range(len(clean)), key=lambda i: (-(shares[i] % whole), i))
    for i in by_remainder[:leftover]:
        parts[i] += 1
    return parts


def _malformed(reason: str) -> ProviderError:
    return ProviderError(f"upstream returned malformed embeddings: {reason}")


def decode_embedding(value: Any) -> np.ndarray:
    """One row: a base64 string of little-endian float32, or a list of numbers -> float32 vector."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _malformed("a row is not valid base64") from None
        if len(raw) % 4:
            raise _malformed("a base64 row is not a whole number of float32 values")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if isinstance(value, list):
        try:
            array = np.asarray(value)
        except ValueError:  # ragged nesting
            array = np.asarray([])
        if array.ndim == 1 and array.dtype.kind in "fi":
            with np.errstate(over="ignore"):  # beyond float32 range -> inf, refused as non-finite
                return array.astype(np.float32)
    raise _malformed("a row is neither a base64 string nor a list of numbers")


def assemble_rows(data: Any, expected_rows: int, expected_width: int | None = None) -> np.ndarray:
    """Upstream `data` -> (n, d) float32 in input order: every index 0..n-1 exactly once, one
    width (the requested one when given), finite values; ProviderError otherwise."""
    if not isinstance(data, list):
        raise _malformed("'data' is not a list")
    if len(data) != expected_rows:
        raise _malformed(f"{len(data)} rows for {expected_rows} inputs")
    rows: list[np.ndarray | None] = [None] * expected_rows
    for row in data:
        index = row.get("index") if isinstance(row, dict) else None
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < expected_rows:
            raise _malformed("a row has a missing or out-of-range index")
        if rows[index] is not None:
            raise _malformed(f"index {index} appears twice")
        rows[index] = decode_embedding(row.get("embedding"))
    vectors = [row for row in rows if row is not None]
    widths = {len(row) for row in vectors}
    if len(widths) != 1 or 0 in widths:
        raise _malformed("rows are empty or of different widths")
    width = widths.pop()
    if expected_width is not None and width != expected_width:
        raise _malformed(f"rows have {width} values, {expected_width} were requested")
    matrix = np.stack(vectors).astype(np.float32, copy=False)
    if not np.isfinite(matrix).all():
        raise _malformed("rows hold non-finite values")
    return matrix


def parse_usage(payload: dict[str, Any]) -> int | None:
    usage = payload.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(tokens, int) and not isinstance(tokens, bool) and tokens >= 0:
        return tokens
    return None


def status_error(
    status: int, retry_after: float | None, *, provider: str, key_env: str, model_id: str
) -> ProviderError:
    """Upstream HTTP status -> domain error. 408, 429 and 5xx are transient (worth a retry or a
    fallback); 401/403 (our key) and 404 (model or base URL) are faults of the configuration; any
    other status is the upstream refusing this one request for good."""
    if status == 429:
        return ProviderTransientError(f"the {provider} upstream is rate limiting requests (HTTP 429)",
                                      retry_after=retry_after)
    if status == 408 or status >= 500:
        return ProviderTransientError(f"the {provider} upstream failed (HTTP {status})", retry_after=retry_after)
    if status in (401, 403):
        return ProviderError(f"the {provider} upstream rejected the API key (HTTP {status}); check {key_env}")
    if status == 404:
        return ProviderError(f"the {provider} upstream answered HTTP 404 for model '{model_id}' "
                             "(unknown model or wrong base URL)")
    return UpstreamRejectedRequest(f"the {provider} upstream refused the request (HTTP {status})")


async def gather_or_cancel(coros: Sequence[Awaitable[T]]) -> list[T]:
    """Like gather, but the first failure cancels the siblings (no orphan upstream calls)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# --- the providers -------------------------------------------------------------------------
class OpenAICompatibleProvider:
    """Shared body of `openai` and `local_api`; a subclass names itself, its env vars, whether a
    key is required, its model table and which models take `dimensions` natively."""

    name: str = "openai_compatible"
    accepts_token_arrays: ClassVar[bool] = True  # token arrays go upstream verbatim
    url_env: ClassVar[str] = ""
    key_env: ClassVar[str] = ""
    requires_key: ClassVar[bool] = False
    known_models: ClassVar[dict[str, tuple[int, int]]] = {}

    def __init__(
        self, config: RemoteAPIConfig, pool: HTTPSessionPool | None = None, *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._config = config
        self._base_url = config.base_url.rstrip("/") if config.base_url else None
        self._pool = pool or HTTPSessionPool(pool_size=config.pool_size, timeout_s=config.timeout_s)
        self._clock = clock

    @property
    def pool(self) -> HTTPSessionPool:
        return self._pool

    def unconfigured_reason(self) -> str | None:
        if self._base_url is None:
            return f"the {self.name} provider has no base URL; set {self.url_env}"
        if self.requires_key and not self._config.api_key:
            return f"the {self.name} provider has no API key; set {self.key_env}"
        return None

    def _require_configured(self) -> str:
        reason = self.unconfigured_reason()
        if reason is not None or self._base_url is None:
            raise ProviderNotImplemented(reason or f"set {self.url_env}", param="model")
        return self._base_url

    def native_dimensions(self, model_id: str) -> bool:  # noqa: ARG002 (subclasses decide per model)
        return False

    def model_info(self, model_id: str) -> ModelInfo:
        self._require_configured()
        dimension, max_tokens = self.known_models.get(model_id, (None, None))
        return ModelInfo(self.name, model_id, dimension, max_tokens, source="remote")

    async def count_tokens(self, model_id: str, texts: Sequence[str]) -> list[int] | None:  # noqa: ARG002
        return None  # the upstream counts (and enforces its own limits)

    def loaded_models(self) -> list[str]:
        return []

    async def health(self) -> dict[str, Any]:
        """Configuration only: probing the upstream would spend its quota on every health check."""
        state: dict[str, Any] = {
            "status": "unconfigured" if self.unconfigured_reason() else "healthy",
            "base_url": redact_url(self._base_url) if self._base_url else None,
        }
        return state

    async def aclose(self) -> None:
        await self._pool.aclose()

    # --- embedding ------------------------------------------------------------------------
    def _dimensions_field(self, model_id: str, dimensions: int | None) -> dict[str, int]:
        if dimensions is None or not self.native_dimensions(model_id):
            return {}
        native = self.known_models.get(model_id, (None, None))[0]
        if dimensions < 1 or (native is not None and dimensions > native):
            raise InvalidInput(f"'dimensions' must be between 1 and {native or 'the model width'} "
                               f"for '{model_id}'", param="dimensions")
        return {"dimensions": dimensions}

    async def embed(
        self, model_id: str, texts: Sequence[InputItem], token_counts: Sequence[int] | None = None,
        *, dimensions: int | None = None,
    ) -> EmbeddingBatch:
        """Vectors in input order; token counts spread the upstream's `usage.prompt_tokens` of each
        request over its inputs in proportion to `token_counts` (or estimates: token-array length,
        ~4 characters per token), so their sum is what the upstream billed (no `usage`: the weights)."""
        base_url = self._require_configured()
        items = list(texts)
        extra = self._dimensions_field(model_id, dimensions)
        weights = [estimate_tokens(i) for i in items]
        if token_counts is not None and len(token_counts) == len(items):
            weights = [int(c) for c in token_counts]
        if not items:
            return EmbeddingBatch(vectors=np.zeros((0, 0), dtype=np.float32), token_counts=[])
        size = max(1, self._config.max_batch_size)
        spans = [range(start, min(start + size, len(items))) for start in range(0, len(items), size)]
        # Bounded here, not only by the connector: time spent queued for a connection counts
        # against aiohttp's total timeout, so a huge fan-out would time out its own tail.
        limit = asyncio.Semaphore(min(len(spans), self._config.pool_size))
        session = await self._pool.session(base_url)

        async def one(span: range) -> tuple[np.ndarray, list[int]]:
            payload = {"model": model_id, "input": [items[i] for i in span], "encoding_format": "base64", **extra}
            async with limit:
                body = await self._post(session, f"{base_url}/embeddings", payload, model_id)
            vectors = assemble_rows(body.get("data"), len(span), extra.get("dimensions"))
            billed = parse_usage(body)
            span_weights = [weights[i] for i in span]
            counts = span_weights if billed is None else apportion_tokens(billed, span_weights)
            return vectors, counts

        parts = await gather_or_cancel([one(span) for span in spans])
        if len({p[0].shape[1] for p in parts}) != 1:
            raise _malformed("upstream requests returned different widths")
        return EmbeddingBatch(
            vectors=np.concatenate([p[0] for p in parts]), token_counts=[c for p in parts for c in p[1]]
        )

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._config.api_key:
            headers["Authorization"] = f"Bearer {self._config.api_key}"
        return headers

    async def _post(
        self, session: aiohttp.ClientSession, url: str, payload: dict[str, Any], model_id: str
    ) -> dict[str, Any]:
        """One upstream call -> its JSON object, or a domain error (single attempt)."""
        try:
            async with session.post(url, json=payload, headers=self._headers()) as response:
                request_id = response.headers.get("x-request-id")
                if not 200 <= response.status < 300:
                    logger.warning("{} upstream answered HTTP {} (request id {})",
                                   self.name, response.status, request_id)
                    retry_after = parse_retry_after(response.headers.get("Retry-After"),
                                                    response.headers.get("retry-after-ms"), now=self._clock())
                    raise status_error(response.status, retry_after, provider=self.name,
                                       key_env=self.key_env, model_id=model_id)
                raw = await response.read()
        except TimeoutError as exc:  # aiohttp's timeouts subclass it
            logger.warning("{} upstream timed out after {}s", self.name, self._pool.timeout_s)
            raise ProviderTransientError(
                f"the {self.name} upstream did not answer within {self._pool.timeout_s:g}s"
            ) from exc
        except aiohttp.ClientError as exc:
            logger.warning("{} upstream connection failed: {}", self.name, type(exc).__name__)
            raise ProviderTransientError(
                f"could not reach the {self.name} upstream ({type(exc).__name__})"
            ) from exc
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            logger.warning("{} upstream sent a non-JSON body (request id {})", self.name, request_id)
            raise ProviderError(f"the {self.name} upstream returned a response that is not a JSON object")
        return body


class OpenAIProvider(OpenAICompatibleProvider):
    """api.openai.com (or a proxy at OPENAI_BASE_URL); a missing key is a 501, see `requires_key`."""

    name = "openai"
    url_env = "OPENAI_BASE_URL"
    key_env = "OPENAI_API_KEY"
    # Without a key every call would be a certain upstream 401; we answer 501 up front instead, as
    # for any provider this server is not set up to serve (it is the operator's, not the caller's, fix).
    requires_key = True
    known_models = OPENAI_MODELS

    def native_dimensions(self, model_id: str) -> bool:
        return model_id.startswith("text-embedding-3-")


class LocalAPIProvider(OpenAICompatibleProvider):
    """Any OpenAI-compatible server (llama.cpp, Ollama, TEI, Infinity, vLLM); key optional.
    Models are whatever the server serves, so width and token limit are unknown here."""

    name = "local_api"
    url_env = "EMBEDDINGS_LOCAL_API_URL"
    key_env = "EMBEDDINGS_LOCAL_API_KEY"


def create_openai_provider(config: EngineConfig) -> OpenAIProvider:
    return OpenAIProvider(config.openai)


def create_local_api_provider(config: EngineConfig) -> LocalAPIProvider:
    return LocalAPIProvider(config.local_api)


__all__ = [
    "OPENAI_MODELS",
    "LocalAPIProvider",
    "OpenAICompatibleProvider",
    "OpenAIProvider",
    "apportion_tokens",
    "assemble_rows",
    "create_local_api_provider",
    "create_openai_provider",
    "decode_embedding",
    "parse_retry_after",
    "redact_url",
]
