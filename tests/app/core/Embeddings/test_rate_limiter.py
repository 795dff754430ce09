"""Rate limiting: token bucket refill on an injected clock (and a property: never more than burst +
rate x time), per-user isolation, the global limit, nothing taken on a denial, `enforce` raising
`RateLimited`; the Redis limiter shared by two instances ("processes") against real Redis with a
unique, cleaned-up prefix, key TTLs, Redis server time, and a dead Redis falling back to local limits."""

from __future__ import annotations

import asyncio
import math

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from support import free_port

from tldw_Server_API.app.core.config import RateLimitConfig
from tldw_Server_API.app.core.Embeddings.rate_limiter import (
    UNLIMITED,
    RateLimiter,
    RateLimitExceeded,
    RedisRateLimiter,
    TokenBucket,
    create_rate_limiter,
)
from tldw_Server_API.app.core.errors import RateLimited


class FakeClock:
    def __init__(self, start: float = 500.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limits(global_rps: float = 0, global_burst: int = 1, tenant_rps: float = 0, tenant_burst: int = 1,
           redis_url: str | None = None, prefix: str = "t:rl") -> RateLimitConfig:
    return RateLimitConfig(enabled=True, global_rps=global_rps, global_burst=global_burst, tenant_rps=tenant_rps,
                           tenant_burst=tenant_burst, redis_url=redis_url, redis_prefix=prefix)


def test_bucket_refills_at_its_rate_up_to_capacity() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, capacity=3, clock=clock)
    assert [bucket.try_acquire().remaining for _ in range(3)] == [2, 1, 0]
    denied = bucket.try_acquire()
    assert not denied.allowed and denied.limit == 3 and denied.retry_after == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.try_acquire().retry_after == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.try_acquire().allowed
    clock.advance(3600)  # a long idle refills to capacity, not beyond
    assert [bucket.try_acquire().allowed for _ in range(4)] == [True, True, True, False]


def test_bucket_survives_a_clock_stepping_back_and_refuses_impossible_costs() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, capacity=1, clock=clock)
    assert bucket.try_acquire().allowed
    clock.advance(-100)
    assert not bucket.try_acquire().allowed
    clock.advance(101)
    assert bucket.try_acquire().allowed
    with pytest.raises(ValueError):
        bucket.try_acquire(2)
    with pytest.raises(ValueError):
        TokenBucket(rate=0, capacity=1)


@given(
    rate=st.floats(0.1, 50),
    capacity=st.integers(1, 20),
    steps=st.lists(st.floats(0, 2), max_size=60),
)
def test_bucket_never_allows_more_than_burst_plus_refill(rate: float, capacity: int, steps: list[float]) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, capacity, clock)
    allowed = 0
    for step in steps:
        clock.advance(step)
        decision = bucket.try_acquire()
        allowed += decision.allowed
        assert decision.retry_after == 0 if decision.allowed else decision.retry_after > 0
        assert 0 <= (decision.remaining or 0) <= capacity
    assert allowed <= capacity + rate * sum(steps) + 1e-6


def test_per_user_buckets_are_isolated() -> None:
    async def scenario() -> None:
        limiter = RateLimiter(limits(tenant_rps=1, tenant_burst=2), FakeClock())
        assert [(await limiter.check("alice")).allowed for _ in range(3)] == [True, True, False]
        denied = await limiter.check("alice")
        assert denied.scope == "user" and denied.limit == 2 and denied.remaining == 0
        assert (await limiter.check("bob")).allowed

    asyncio.run(scenario())


def test_the_global_limit_spans_users_and_a_denial_takes_no_token() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        limiter = RateLimiter(limits(global_rps=1, global_burst=3, tenant_rps=0.01, tenant_burst=2), clock)
        results = [await limiter.check(user) for user in ["a", "b", "c", "d"]]
        assert [r.allowed for r in results] == [True, True, True, False]
        assert results[-1].scope == "global" and results[-1].limit == 3
        assert results[0].scope == "user" and results[0].remaining == 1  # the tightest bucket is reported
        clock.advance(3.0)  # the global bucket refills; the slow per-user ones barely move
        # "d" was refused by the global bucket, so its own bucket is still full (2 tokens).
        again = await limiter.check("d")
        assert again.allowed and again.scope == "user" and again.remaining == 1

    asyncio.run(scenario())


def test_enforce_raises_rate_limited_naming_the_limit() -> None:
    async def scenario() -> None:
        limiter = RateLimiter(limits(tenant_rps=0.5, tenant_burst=1), FakeClock())
        assert (await limiter.enforce("u")).allowed
        with pytest.raises(RateLimited) as info:
            await limiter.enforce("u")
        assert isinstance(info.value, RateLimitExceeded)
        assert info.value.retry_after == pytest.approx(2.0)
        assert "per-user" in info.value.message and info.value.decision.limit == 1
        global_limiter = RateLimiter(limits(global_rps=1, global_burst=1), FakeClock())
        await global_limiter.enforce("u")
        with pytest.raises(RateLimited, match="global"):
            await global_limiter.enforce("v")

    asyncio.run(scenario())


def test_disabled_or_zero_limits_allow_everything() -> None:
    async def scenario() -> None:
        off = RateLimitConfig(enabled=False, global_rps=1, global_burst=1, tenant_rps=1, tenant_burst=1,
                              redis_url=None, redis_prefix="x")
        for config in [off, limits()]:
            limiter = create_rate_limiter(config, FakeClock())
            assert isinstance(limiter, RateLimiter)
            assert [await limiter.enforce("u") for _ in range(5)] == [UNLIMITED] * 5

    asyncio.run(scenario())


def test_idle_user_buckets_are_pruned() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limits(tenant_rps=10, tenant_burst=1), clock)
    for i in range(10_000):
        limiter.check_now(f"user{i}")
    clock.advance(1.0)  # every bucket refilled: equivalent to a new one
    limiter.check_now("newcomer")
    assert limiter.tracked_users() == 1


# --- Redis ------------------------------------------------------------------------------------


def test_redis_limit_is_shared_by_two_processes(redis_prefix: tuple[str, str]) -> None:
    url, prefix = redis_prefix

    async def scenario() -> None:
        clock = FakeClock(1_700_000_000.0)
        config = limits(global_rps=1, global_burst=3, tenant_rps=1, tenant_burst=2, redis_url=url, prefix=prefix)
        made = create_rate_limiter(config)
        assert isinstance(made, RedisRateLimiter)  # the factory picks Redis by URL
        await made.aclose()
        first = RedisRateLimiter(config, shared_clock=clock)
        second = RedisRateLimiter(config, shared_clock=clock)
        try:
            decisions = [await lim.check(user) for lim, user in [(first, "a"), (second, "a"), (first, "b")]]
            assert [d.allowed for d in decisions] == [True, True, True]
            assert decisions[1].scope == "user" and decisions[1].remaining == 0
            denied_user = await second.check("a")
            assert not denied_user.allowed and denied_user.scope == "user"
            denied_global = await first.check("c")
            assert not denied_global.allowed and denied_global.scope == "global"
            assert denied_global.retry_after == pytest.approx(1.0)
            with pytest.raises(RateLimited):
                await second.enforce("c")
            clock.advance(1.0)
            assert (await second.check("c")).allowed
            client = redis.Redis.from_url(url)
            ttl_ms = client.pttl(f"{prefix}:user:a")
            assert 0 < ttl_ms <= 3000  # refilled in <= 2 s, plus 1 s of slack
            assert client.pttl(f"{prefix}:global") > 0
            client.close()
        finally:
            await first.aclose()
            await second.aclose()

    asyncio.run(scenario())


def test_redis_limiter_uses_redis_time_by_default(redis_prefix: tuple[str, str]) -> None:
    url, prefix = redis_prefix

    async def scenario() -> None:
        config = limits(tenant_rps=0.001, tenant_burst=2, redis_url=url, prefix=prefix)
        one, two = RedisRateLimiter(config), RedisRateLimiter(config)
        try:
            assert (await one.check("u")).allowed and (await two.check("u")).allowed
            denied = await one.check("u")
            assert not denied.allowed and 990 < denied.retry_after <= 1000
        finally:
            await one.aclose()
            await two.aclose()

    asyncio.run(scenario())


def test_dead_redis_falls_back_to_in_process_limits() -> None:
    async def scenario() -> None:
        config = limits(tenant_rps=1, tenant_burst=2, redis_url=f"redis://127.0.0.1:{free_port()}/0")
        limiter = RedisRateLimiter(config, clock=FakeClock())
        try:
            results = [await limiter.check("u") for _ in range(3)]
            assert [r.allowed for r in results] == [True, True, False]
            assert math.isclose(results[-1].retry_after, 1.0)
        finally:
            await limiter.aclose()

    asyncio.run(scenario())
