"""The embedding cache: L1 an in-process TTL+LRU map, L2 optionally Redis shared by every process.

`TTLCache` and `cache_key` are pure (injected clock); `MultiTierCache` adds the Redis tier and the
optional sweeper task. An entry is a `CachedEmbedding`: the float32 vector (a read-only copy) and
the input's token count, so a request answered from the cache needs no tokenizer. May import
core.config, numpy, loguru and redis (clients made in `create_embedding_cache`, never at import).
A Redis failure never fails a request: it is logged and read as a miss.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from loguru import logger
from redis.exceptions import RedisError

from tldw_Server_API.app.core.config import CacheConfig

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]
_KEY_VERSION = "emb-v2"     # bump to orphan every stored key when the entry format changes
_L2_RETRY_S = 5.0           # after a Redis error, skip L2 this long (a dead Redis costs no latency)
_L2_REDIS_ERRORS = (RedisError, OSError, TimeoutError)


def cache_key(
    provider: str, model: str, revision: str | None, text_or_tokens: str | Sequence[int] | np.ndarray
) -> str:
    """sha256 hex of a canonical JSON of (provider, model, revision, kind, input). The kind tag
    keeps a token array apart from any string; JSON keeps field boundaries unambiguous."""
    if isinstance(text_or_tokens, str):
        payload: list[Any] = [_KEY_VERSION, provider, model, revision, "text", text_or_tokens]
    else:
        payload = [_KEY_VERSION, provider, model, revision, "tokens", [int(t) for t in text_or_tokens]]
    blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def frozen_vector(vector: Any) -> np.ndarray:
    """A read-only float32 1-D copy of `vector` (callers cannot corrupt cached entries); an array
    this function already froze is returned as is."""
    if (
        isinstance(vector, np.ndarray) and vector.dtype == np.float32 and vector.ndim == 1
        and vector.flags.owndata and not vector.flags.writeable
    ):
        return vector
    array = np.array(vector, dtype=np.float32, copy=True).reshape(-1)
    array.setflags(write=False)
    return array


class CachedEmbedding(NamedTuple):
    vector: np.ndarray       # read-only float32, 1-D
    tokens: int | None       # the input's token count before any truncation; None: not counted


def cached_embedding(vector: Any, tokens: int | None = None) -> CachedEmbedding:
    return CachedEmbedding(frozen_vector(vector), None if tokens is None else int(tokens))


_NO_COUNT = -1   # L2 blobs: little-endian int32 token count (this for None), then the float32 vector


def _to_blob(entry: CachedEmbedding) -> bytes:
    count = _NO_COUNT if entry.tokens is None else entry.tokens
    return np.int32(count).astype("<i4").tobytes() + entry.vector.astype("<f4").tobytes()


def _from_blob(blob: Any) -> CachedEmbedding | None:
    if not isinstance(blob, bytes | bytearray) or len(blob) < 8 or len(blob) % 4:
        return None
    count = int(np.frombuffer(blob, dtype="<i4", count=1)[0])
    return cached_embedding(np.frombuffer(blob, dtype="<f4", offset=4), None if count < 0 else count)


class TTLCache:
    """Key -> `CachedEmbedding` with a time-to-live and least-recently-used eviction beyond `max_size`.
    Expired entries vanish on read and on `sweep()`. Thread-safe (one lock, no I/O under it)."""

    def __init__(self, max_size: int, ttl_s: float, clock: Clock = time.monotonic) -> None:
        if max_size < 1 or not ttl_s > 0:
            raise ValueError("max_size must be >= 1 and ttl_s > 0")
        self.max_size = max_size
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, CachedEmbedding]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.expirations = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedEmbedding | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                self.expirations += 1
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]

    def set(self, key: str, vector: Any, tokens: int | None = None) -> None:
        value = vector if isinstance(vector, CachedEmbedding) else cached_embedding(vector, tokens)
        with self._lock:
            self._entries[key] = (self._clock() + self.ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
                self.evictions += 1

    def keys(self) -> list[str]:
        """Keys from least to most recently used (expired ones included until read or swept)."""
        with self._lock:
            return list(self._entries)

    def sweep(self) -> int:
        """Drop every expired entry; returns how many."""
        with self._lock:
            now = self._clock()
            expired = [key for key, (expires_at, _) in self._entries.items() if expires_at <= now]
            for key in expired:
                del self._entries[key]
            self.expirations += len(expired)
            return len(expired)

    def clear(self) -> int:
        with self._lock:
            removed = len(self._entries)
            self._entries.clear()
            return removed

    def stats(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {
            "size": len(self._entries),
            "max_size": self.max_size,
            "ttl_s": self.ttl_s,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / lookups if lookups else 0.0,
            "evictions": self.evictions,
            "expirations": self.expirations,
        }


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class MultiTierCache:
    """L1 `TTLCache` in front of an optional Redis L2 (`redis`: a `redis.asyncio.Redis`). L2 holds
    each entry as bytes (`_to_blob`) under `{redis_prefix}:{key}` with the same TTL. A disabled cache
    (`config.enabled` false) stores nothing and answers every lookup with no hits."""

    def __init__(
        self,
        config: CacheConfig,
        clock: Clock = time.monotonic,
        redis: Any | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        owns_redis: bool = False,
    ) -> None:
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self.l1 = TTLCache(config.max_size, config.ttl_s, clock)
        self._redis = redis
        self._owns_redis = owns_redis
        self._l2_retry_at = float("-inf")
        self._sweeper: asyncio.Task[None] | None = None
        self.l2_hits = self.misses = self.l2_errors = 0

    # --- L2 plumbing ----------------------------------------------------------------------------
    def _l2_key(self, key: str) -> str:
        return f"{self.config.redis_prefix}:{key}"

    def _l2_usable(self) -> bool:
        return self._redis is not None and self._clock() >= self._l2_retry_at

    def _l2_failed(self, action: str, exc: BaseException) -> None:
        self.l2_errors += 1
        self._l2_retry_at = self._clock() + _L2_RETRY_S
        logger.warning("embedding cache: Redis {} failed ({}); treating as a miss", action, type(exc).__name__)

    async def _l2_get(self, keys: list[str]) -> dict[str, CachedEmbedding]:
        if not keys or not self._l2_usable():
            return {}
        assert self._redis is not None
        try:
            blobs = await self._redis.mget([self._l2_key(k) for k in keys])
        except _L2_REDIS_ERRORS as exc:
            self._l2_failed("read", exc)
            return {}
        found: dict[str, CachedEmbedding] = {}
        for key, blob in zip(keys, blobs, strict=True):
            entry = _from_blob(blob)
            if entry is not None:
                found[key] = entry
        return found

    async def _l2_set(self, items: Mapping[str, CachedEmbedding]) -> None:
        if not items or not self._l2_usable():
            return
        assert self._redis is not None
        ttl_ms = max(1, int(self.config.ttl_s * 1000))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, entry in items.items():
                    pipe.set(self._l2_key(key), _to_blob(entry), px=ttl_ms)
                await pipe.execute()
        except _L2_REDIS_ERRORS as exc:
            self._l2_failed("write", exc)

    async def _l2_clear(self) -> int:
        if not self._l2_usable():
            return 0
        assert self._redis is not None
        removed = 0
        try:
            batch: list[Any] = []
            async for name in self._redis.scan_iter(match=_escape_glob(self.config.redis_prefix) + ":*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    removed += await self._redis.unlink(*batch)
                    batch = []
            if batch:
                removed += await self._redis.unlink(*batch)
        except _L2_REDIS_ERRORS as exc:
            self._l2_failed("clear", exc)
        return removed

    # --- public API -----------------------------------------------------------------------------
    async def get_many(self, keys: Sequence[str]) -> dict[int, CachedEmbedding]:
        """Index -> entry for every key found: L1 first, then L2 (its hits are promoted to L1)."""
        if not self.config.enabled:
            return {}
        found: dict[int, CachedEmbedding] = {}
        missing: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            entry = self.l1.get(key)
            if entry is None:
                missing.setdefault(key, []).append(index)
            else:
                found[index] = entry
        from_l2 = await self._l2_get(list(missing)) if missing else {}
        for key, indices in missing.items():
            entry = from_l2.get(key)
            if entry is None:
                self.misses += 1
                continue
            self.l2_hits += 1
            self.l1.set(key, entry)
            for index in indices:
                found[index] = entry
        return found

    async def set_many(self, entries: Mapping[str, CachedEmbedding]) -> None:
        """Store entries (made by `cached_embedding`) under their keys in L1 and (one pipeline) L2."""
        if not self.config.enabled or not entries:
            return
        for key, entry in entries.items():
            self.l1.set(key, entry)
        await self._l2_set(entries)

    async def get(self, key: str) -> CachedEmbedding | None:
        return (await self.get_many([key])).get(0)

    async def set(self, key: str, vector: Any, tokens: int | None = None) -> None:
        await self.set_many({key: cached_embedding(vector, tokens)})

    async def clear(self) -> int:
        """Empty both tiers; returns L1 entries removed plus L2 keys removed."""
        return self.l1.clear() + await self._l2_clear()

    def sweep(self) -> int:
        return self.l1.sweep()

    def stats(self) -> dict[str, Any]:
        l1 = self.l1.stats()
        hits = l1["hits"] + self.l2_hits
        lookups = hits + self.misses
        return {
            **l1,
            "enabled": self.config.enabled,
            "hits": hits,                   # found in either tier
            "misses": self.misses,          # found in neither
            "hit_rate": hits / lookups if lookups else 0.0,
            "l1_hits": l1["hits"],
            "l1_misses": l1["misses"],
            "l2_enabled": self._redis is not None,
            "l2_hits": self.l2_hits,
            "l2_errors": self.l2_errors,
        }

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the periodic L1 sweeper when `config.daemon` (and the cache) is on; idempotent."""
        if self.config.enabled and self.config.daemon and self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.create_task(self._sweep_forever(), name="embedding-cache-sweeper")

    @property
    def sweeper_running(self) -> bool:
        return self._sweeper is not None and not self._sweeper.done()

    async def _sweep_forever(self) -> None:
        while True:
            await self._sleep(self.config.cleanup_interval_s)
            removed = self.l1.sweep()
            if removed:
                logger.debug("embedding cache: swept {} expired entries", removed)

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._redis is not None and self._owns_redis:
            await self._redis.aclose()


def create_embedding_cache(config: CacheConfig, clock: Clock = time.monotonic) -> MultiTierCache:
    """The cache for `config`: with a Redis L2 (a client owned and closed by the cache) when
    `config.redis_url` is set. Call `start()` inside the event loop, `aclose()` at shutdown."""
    client = None
    if config.enabled and config.redis_url:
        import redis.asyncio as redis_asyncio

        client = redis_asyncio.Redis.from_url(config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    return MultiTierCache(config, clock, client, owns_redis=client is not None)

