"""Request rate limits: a global and a per-user token bucket, in process or shared through Redis.

`TokenBucket` is pure (injected clock). `RateLimiter` keeps buckets in process; `RedisRateLimiter`
keeps them in Redis behind one atomic Lua script, so several server processes share one limit.
May import core.config, core.errors and redis (clients made in constructors, never at import).
Must not know HTTP: `Decision` carries what the API turns into X-RateLimit-* and Retry-After.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger
from redis.exceptions import RedisError

from tldw_Server_API.app.core.config import RateLimitConfig
from tldw_Server_API.app.core.errors import RateLimited

Clock = Callable[[], float]
_PRUNE_AT = 10_000  # per-user buckets kept in process before full (= idle) ones are dropped
_REDIS_RETRY_S = 5.0  # after a Redis error, use the in-process fallback this long before trying again


@dataclass(frozen=True)
class Decision:
    """The verdict on one request. `limit` is the deciding bucket's capacity (burst) and
    `remaining` its whole tokens left; both None when no limit applies (omit the headers).
    `retry_after` is seconds until a denied request would be allowed (0 when allowed).
    `scope` names the deciding limit: "global", "user" or None."""

    allowed: bool
    limit: int | None
    remaining: int | None
    retry_after: float
    scope: str | None = None


UNLIMITED = Decision(allowed=True, limit=None, remaining=None, retry_after=0.0, scope=None)


class TokenBucket:
    """`capacity` tokens, refilled at `rate` per second; a request takes `n` tokens."""

    def __init__(self, rate: float, capacity: int, clock: Clock = time.monotonic) -> None:
        if not rate > 0 or capacity < 1:
            raise ValueError("rate must be > 0 and capacity >= 1")
        self.rate = float(rate)
        self.capacity = int(capacity)
        self._clock = clock
        self._tokens = float(capacity)
        self._stamp = clock()

    def _refill(self) -> float:
        now = self._clock()
        elapsed = max(0.0, now - self._stamp)  # a clock that steps back never drains the bucket
        self._tokens = min(float(self.capacity), self._tokens + elapsed * self.rate)
        self._stamp = now
        return self._tokens

    def is_full(self) -> bool:
        return self._refill() >= self.capacity

    def peek(self, n: int = 1, scope: str | None = None) -> Decision:
        """What `try_acquire(n)` would answer, taking nothing."""
        if n < 1 or n > self.capacity:
            raise ValueError(f"n must be within 1..{self.capacity}")
        tokens = self._refill()
        if tokens >= n:
            return Decision(True, self.capacity, int(tokens - n), 0.0, scope)
        return Decision(False, self.capacity, int(tokens), (n - tokens) / self.rate, scope)

    def try_acquire(self, n: int = 1, scope: str | None = None) -> Decision:
        decision = self.peek(n, scope)
        if decision.allowed:
            self._tokens -= n
        return decision


def combine(decisions: list[Decision]) -> Decision:
    """One answer from several buckets: the longest wait among the denials, else the tightest."""
    if not decisions:
        return UNLIMITED
    denied = [d for d in decisions if not d.allowed]
    if denied:
        return max(denied, key=lambda d: d.retry_after)
    return min(decisions, key=lambda d: d.remaining if d.remaining is not None else math.inf)


class RateLimitExceeded(RateLimited):
    """`RateLimited` (429) carrying the `Decision`, so the API can still send the limit headers."""

    def __init__(self, message: str, decision: Decision) -> None:
        super().__init__(message, retry_after=decision.retry_after)
        self.decision = decision


def rate_limited_error(decision: Decision) -> RateLimitExceeded:
    which = "per-user" if decision.scope == "user" else "global"
    return RateLimitExceeded(
        f"{which} rate limit exceeded ({decision.limit} request burst); retry after {decision.retry_after:.2f} s",
        decision,
    )


class RateLimiterProtocol(Protocol):
    async def check(self, user_id: str) -> Decision: ...
    async def enforce(self, user_id: str) -> Decision: ...
    async def aclose(self) -> None: ...


class RateLimiter:
    """In-process limits: one global bucket (if `global_rps` > 0) and one per user (if `tenant_rps`
    > 0). A request takes a token from each applicable bucket, or from none when any is empty."""

    def __init__(self, config: RateLimitConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._global: TokenBucket | None = None
        if config.enabled and config.global_rps > 0:
            self._global = TokenBucket(config.global_rps, config.global_burst, clock)
        self._users: dict[str, TokenBucket] = {}

    @property
    def active(self) -> bool:
        return self._global is not None or (self.config.enabled and self.config.tenant_rps > 0)

    def _user_bucket(self, user_id: str) -> TokenBucket | None:
        if not (self.config.enabled and self.config.tenant_rps > 0):
            return None
        bucket = self._users.get(user_id)
        if bucket is None:
            if len(self._users) >= _PRUNE_AT:
                self._prune()
            bucket = TokenBucket(self.config.tenant_rps, self.config.tenant_burst, self._clock)
            self._users[user_id] = bucket
        return bucket

    def _prune(self) -> None:
        # A full bucket is indistinguishable from a new one, so dropping it loses nothing.
        for user_id in [u for u, b in self._users.items() if b.is_full()]:
            del self._users[user_id]

    def tracked_users(self) -> int:
        return len(self._users)

    def check_now(self, user_id: str) -> Decision:
        """The synchronous core of `check`."""
        buckets = [(b, s) for b, s in ((self._global, "global"), (self._user_bucket(user_id), "user")) if b]
        decision = combine([bucket.peek(1, scope) for bucket, scope in buckets])
        if decision.allowed:
            for bucket, _ in buckets:
                bucket.try_acquire(1)
        return decision

    async def check(self, user_id: str) -> Decision:
        return self.check_now(user_id)

    async def enforce(self, user_id: str) -> Decision:
        decision = self.check_now(user_id)
        if not decision.allowed:
            raise rate_limited_error(decision)
        return decision

    async def aclose(self) -> None:
        return None


# KEYS: bucket keys. ARGV: now ('' = Redis server time), n, then rate and capacity per key.
# Returns {allowed, index of the deciding denial (0: none), retry_after, remaining per key...};
# floats travel as strings because Lua numbers come back to the client as integers.
_TOKEN_BUCKET_LUA = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local n = tonumber(ARGV[2])
local tokens = {}
local worst, worst_i = 0, 0
for i, key in ipairs(KEYS) do
  local rate, cap = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local level, ts = tonumber(state[1]), tonumber(state[2])
  if not level or not ts then level, ts = cap, now end
  level = math.min(cap, level + math.max(0, now - ts) * rate)
  tokens[i] = level
  if level < n and (n - level) / rate >= worst then worst, worst_i = (n - level) / rate, i end
end
local result = {worst_i == 0 and 1 or 0, worst_i, string.format('%.17g', worst)}
for i, key in ipairs(KEYS) do
  local rate, cap = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local level = tokens[i]
  if worst_i == 0 then level = level - n end
  redis.call('HSET', key, 'tokens', string.format('%.17g', level), 'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.ceil((cap - level) / rate * 1000) + 1000)
  result[#result + 1] = string.format('%.17g', level)
end
return result
"""


class RedisRateLimiter:
    """The same limits kept in Redis (keys `{redis_prefix}:global`, `{redis_prefix}:user:{id}`,
    expiring once refilled), so every process sharing the Redis shares them. Time is Redis's own
    (`TIME`) unless `shared_clock` is given (tests); process clocks cannot be compared. When Redis
    fails, a warning is logged and the in-process `RateLimiter` answers for `_REDIS_RETRY_S`."""

    def __init__(
        self,
        config: RateLimitConfig,
        *,
        client: Any | None = None,
        clock: Clock = time.monotonic,
        shared_clock: Clock | None = None,
    ) -> None:
        if client is None:
            if not config.redis_url:
                raise ValueError("RedisRateLimiter needs config.redis_url or a client")
            import redis.asyncio as redis_asyncio

            client = redis_asyncio.Redis.from_url(
                config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
            )
            self._owns_client = True
        else:
            self._owns_client = False
        self.config = config
        self._client = client
        self._script = client.register_script(_TOKEN_BUCKET_LUA)
        self._clock = clock
        self._shared_clock = shared_clock
        self._fallback = RateLimiter(config, clock)
        self._redis_retry_at = -math.inf

    def _buckets(self, user_id: str) -> list[tuple[str, float, int, str]]:
        cfg, prefix = self.config, self.config.redis_prefix
        buckets = []
        if cfg.enabled and cfg.global_rps > 0:
            buckets.append((f"{prefix}:global", cfg.global_rps, cfg.global_burst, "global"))
        if cfg.enabled and cfg.tenant_rps > 0:
            buckets.append((f"{prefix}:user:{user_id}", cfg.tenant_rps, cfg.tenant_burst, "user"))
        return buckets

    async def check(self, user_id: str) -> Decision:
        buckets = self._buckets(user_id)
        if not buckets:
            return UNLIMITED
        if self._clock() < self._redis_retry_at:
            return self._fallback.check_now(user_id)
        args: list[Any] = ["" if self._shared_clock is None else repr(self._shared_clock()), 1]
        for _, rate, capacity, _ in buckets:
            args += [repr(float(rate)), int(capacity)]
        try:
            raw = await self._script(keys=[key for key, *_ in buckets], args=args)
        except (RedisError, OSError, TimeoutError) as exc:  # keep serving, with local limits
            logger.warning("rate limiter: Redis unavailable ({}); using in-process limits", type(exc).__name__)
            self._redis_retry_at = self._clock() + _REDIS_RETRY_S
            return self._fallback.check_now(user_id)
        return _decode(raw, buckets)

    async def enforce(self, user_id: str) -> Decision:
        decision = await self.check(user_id)
        if not decision.allowed:
            raise rate_limited_error(decision)
        return decision

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(raw: list[Any], buckets: list[tuple[str, float, int, str]]) -> Decision:
    allowed, worst_i, retry_after = int(raw[0]) == 1, int(raw[1]), float(_text(raw[2]))
    levels = [float(_text(v)) for v in raw[3:]]
    if not allowed:
        _, _, capacity, scope = buckets[worst_i - 1]
        return Decision(False, capacity, int(levels[worst_i - 1]), retry_after, scope)
    return combine([
        Decision(True, capacity, int(level), 0.0, scope)
        for (_, _, capacity, scope), level in zip(buckets, levels, strict=True)
    ])


def create_rate_limiter(config: RateLimitConfig, clock: Clock = time.monotonic) -> RateLimiterProtocol:
    """`RedisRateLimiter` when `config.redis_url` is set (and limits are on), else `RateLimiter`."""
    if config.enabled and config.redis_url:
        return RedisRateLimiter(config, clock=clock)
    return RateLimiter(config, clock)
