"""Embedding cache: TTLCache size bound (property), TTL expiry and sweep on an injected clock, LRU
order, stats, clear count, immutable float32 copies; cache keys separating provider/model/revision/
input kind; MultiTierCache index mapping, L2 shared by two instances over real Redis (unique prefix,
cleaned up), TTLs on L2 keys, a dead Redis read as misses, the disabled cache, and the sweeper task."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis.asyncio as redis_asyncio
from hypothesis import given
from hypothesis import strategies as st
from support import free_port

from tldw_Server_API.app.core.config import CacheConfig
from tldw_Server_API.app.core.Embeddings.multi_tier_cache import (
    MultiTierCache,
    TTLCache,
    cache_key,
    cached_embedding,
    create_embedding_cache,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def cache_config(redis_url: str | None = None, prefix: str = "t:cache", enabled: bool = True,
                 max_size: int = 100, ttl_s: float = 60.0, daemon: bool = False) -> CacheConfig:
    return CacheConfig(enabled=enabled, ttl_s=ttl_s, max_size=max_size, cleanup_interval_s=30.0, daemon=daemon,
                       redis_url=redis_url, redis_prefix=prefix)


# --- TTLCache ---------------------------------------------------------------------------------


def test_set_and_get_store_an_immutable_float32_copy() -> None:
    cache = TTLCache(max_size=10, ttl_s=60, clock=FakeClock())
    source = [1.0, 2.0]
    cache.set("key1", source, tokens=7)
    entry = cache.get("key1")
    assert entry is not None and entry.tokens == 7
    value = entry.vector
    assert value.dtype == np.float32 and value.tolist() == [1.0, 2.0]
    with pytest.raises(ValueError):
        value[0] = 5.0
    array = np.array([3.0, 4.0], dtype=np.float32)
    cache.set("key2", array)
    array[0] = 99.0
    assert cache.get("key2").vector.tolist() == [3.0, 4.0]  # type: ignore[union-attr]
    assert cache.get("nonexistent") is None


@given(max_size=st.integers(1, 50), ops=st.lists(st.tuples(st.booleans(), st.integers(0, 80)), max_size=200))
def test_cache_never_exceeds_max_size(max_size: int, ops: list[tuple[bool, int]]) -> None:
    cache = TTLCache(max_size=max_size, ttl_s=60, clock=FakeClock())
    inserted: set[int] = set()
    for is_set, key in ops:
        if is_set:
            cache.set(f"key_{key}", [float(key)])
            inserted.add(key)
        else:
            value = cache.get(f"key_{key}")
            assert value is None or value.vector.tolist() == [float(key)]
        assert len(cache) <= max_size
    assert cache.stats()["size"] == min(max_size, len(inserted))  # evicts only beyond max_size


def test_least_recently_used_is_evicted_first() -> None:
    cache = TTLCache(max_size=3, ttl_s=60, clock=FakeClock())
    for key in "abc":
        cache.set(key, [1.0])
    assert cache.get("a") is not None   # a becomes the most recent
    cache.set("d", [1.0])               # evicts b, the least recent
    assert cache.keys() == ["c", "a", "d"]
    assert cache.get("b") is None
    cache.set("c", [2.0])               # overwriting refreshes recency too
    cache.set("e", [1.0])
    assert cache.keys() == ["d", "c", "e"]
    assert cache.stats()["evictions"] == 2


def test_entries_expire_on_read_and_on_sweep() -> None:
    clock = FakeClock()
    cache = TTLCache(max_size=10, ttl_s=10, clock=clock)
    cache.set("old", [1.0])
    clock.advance(6)
    cache.set("young", [2.0])
    clock.advance(4)                    # old is exactly 10 s old: expired
    assert cache.get("old") is None
    assert cache.get("young") is not None
    cache.set("other", [3.0])
    clock.advance(6)                    # young expires, other (6 s old) lives
    assert cache.sweep() == 1
    assert cache.keys() == ["other"]
    stats = cache.stats()
    assert stats["expirations"] == 2 and stats["hits"] == 1 and stats["misses"] == 1
    assert stats["hit_rate"] == 0.5 and stats["size"] == 1


def test_clear_returns_the_number_removed() -> None:
    cache = TTLCache(max_size=10, ttl_s=10, clock=FakeClock())
    for i in range(4):
        cache.set(str(i), [float(i)])
    assert cache.clear() == 4
    assert len(cache) == 0 and cache.clear() == 0


def test_invalid_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        TTLCache(max_size=0, ttl_s=1)


# --- cache keys -------------------------------------------------------------------------------


def test_keys_separate_provider_model_revision_and_input() -> None:
    base = ("openai", "text-embedding-3-small", None, "hello")
    variants = [
        base,
        ("huggingface", "text-embedding-3-small", None, "hello"),
        ("openai", "text-embedding-3-large", None, "hello"),
        ("openai", "text-embedding-3-small", "abc123", "hello"),
        ("openai", "text-embedding-3-small", "", "hello"),
        ("openai", "text-embedding-3-small", None, "hello "),
        ("openai", "text-embedding-3-small", None, [15339]),
        ("openai", "text-embedding-3-small", None, "[15339]"),
        ("openai:text", "embedding-3-small", None, "hello"),
    ]
    keys = [cache_key(*v) for v in variants]  # type: ignore[arg-type]
    assert len(set(keys)) == len(variants)
    assert cache_key(*base) == keys[0] and len(keys[0]) == 64
    assert cache_key("p", "m", None, [1, 2]) == cache_key("p", "m", None, np.array([1, 2]))


@given(a=st.tuples(st.text(max_size=5), st.text(max_size=5), st.none() | st.text(max_size=3),
                   st.text(max_size=8) | st.lists(st.integers(0, 100_000), max_size=4)),
       b=st.tuples(st.text(max_size=5), st.text(max_size=5), st.none() | st.text(max_size=3),
                   st.text(max_size=8) | st.lists(st.integers(0, 100_000), max_size=4)))
def test_distinct_inputs_give_distinct_keys(a: tuple, b: tuple) -> None:
    assert (cache_key(*a) == cache_key(*b)) == (a == b)


# --- MultiTierCache without Redis ---------------------------------------------------------------


def test_get_many_maps_indices_including_duplicates() -> None:
    async def scenario() -> None:
        cache = MultiTierCache(cache_config(), FakeClock())
        await cache.set_many({"a": cached_embedding([1.0, 2.0], 3), "b": cached_embedding(np.array([3.0, 4.0]), None)})
        found = await cache.get_many(["x", "a", "b", "a"])
        assert sorted(found) == [1, 2, 3]
        assert found[1].vector.tolist() == [1.0, 2.0] and found[3].vector.tolist() == [1.0, 2.0]
        assert found[1].tokens == 3 and found[2].tokens is None
        assert (await cache.get("b")).vector.tolist() == [3.0, 4.0]  # type: ignore[union-attr]
        stats = cache.stats()
        assert stats["hits"] == 4 and stats["misses"] == 1 and stats["l2_enabled"] is False
        assert await cache.clear() == 2 and await cache.get("a") is None

    asyncio.run(scenario())


def test_a_disabled_cache_stores_nothing() -> None:
    async def scenario() -> None:
        cache = create_embedding_cache(cache_config(enabled=False, redis_url="redis://127.0.0.1:1/0"))
        await cache.set("a", [1.0])
        assert await cache.get_many(["a"]) == {}
        assert cache.stats()["enabled"] is False and cache.stats()["size"] == 0
        cache.start()
        await cache.aclose()

    asyncio.run(scenario())


def test_sweeper_runs_every_interval() -> None:
    async def scenario() -> None:
        clock, ticks, slept = FakeClock(), asyncio.Queue[None](), []
        swept_once = asyncio.Event()

        async def fake_sleep(seconds: float) -> None:
            slept.append(seconds)
            if len(slept) == 2:          # the loop came back to sleep: one sweep has run
                swept_once.set()
            await ticks.get()

        cache = MultiTierCache(cache_config(ttl_s=10, daemon=True), clock, sleep=fake_sleep)
        await cache.set_many({"a": cached_embedding([1.0]), "b": cached_embedding([2.0])})
        cache.start()
        cache.start()                    # idempotent
        assert cache.sweeper_running
        clock.advance(11)
        ticks.put_nowait(None)
        await swept_once.wait()
        assert cache.stats()["size"] == 0 and cache.stats()["expirations"] == 2
        assert slept == [30.0, 30.0]
        await cache.aclose()
        assert not cache.sweeper_running

    asyncio.run(scenario())


def test_no_sweeper_without_the_daemon_flag() -> None:
    async def scenario() -> None:
        cache = MultiTierCache(cache_config(daemon=False), FakeClock())
        cache.start()
        assert not cache.sweeper_running

    asyncio.run(scenario())


# --- Redis L2 ---------------------------------------------------------------------------------


def test_l2_is_shared_by_two_processes(redis_prefix: tuple[str, str]) -> None:
    url, prefix = redis_prefix

    async def scenario() -> None:
        config = cache_config(redis_url=url, prefix=prefix, ttl_s=60)
        writer = create_embedding_cache(config)
        reader = MultiTierCache(config, redis=redis_asyncio.Redis.from_url(url), owns_redis=True)
        probe = redis_asyncio.Redis.from_url(url)
        try:
            k1 = np.array([0.1, -2.5, 3.0], dtype=np.float32)
            await writer.set_many({"k1": cached_embedding(k1, 12), "k2": cached_embedding([1.0, 2.0], None)})
            assert 0 < await probe.pttl(f"{prefix}:k1") <= 60_000
            found = await reader.get_many(["k2", "missing", "k1"])
            assert sorted(found) == [0, 2]
            assert found[2].vector.dtype == np.float32 and np.array_equal(found[2].vector, k1)
            assert not found[2].vector.flags.writeable
            assert found[2].tokens == 12 and found[0].tokens is None   # the count travels through Redis
            stats = reader.stats()
            assert stats["l2_hits"] == 2 and stats["misses"] == 1 and stats["l1_hits"] == 0
            await probe.delete(f"{prefix}:k1", f"{prefix}:k2")
            again = await reader.get_many(["k1", "k2"])   # promoted into the reader's L1
            assert sorted(again) == [0, 1] and reader.stats()["l1_hits"] == 2
            await writer.set_many({"k3": cached_embedding([5.0], 1)})
            assert await reader.clear() == 2 + 1          # two L1 entries + k3 in L2
            assert [k async for k in probe.scan_iter(match=f"{prefix}:*")] == []
        finally:
            await writer.aclose()
            await reader.aclose()
            await probe.aclose()

    asyncio.run(scenario())


def test_a_corrupt_l2_value_is_a_miss(redis_prefix: tuple[str, str]) -> None:
    url, prefix = redis_prefix

    async def scenario() -> None:
        cache = create_embedding_cache(cache_config(redis_url=url, prefix=prefix))
        probe = redis_asyncio.Redis.from_url(url)
        try:
            await probe.set(f"{prefix}:bad", b"\x00\x01\x02", px=10_000)
            assert await cache.get_many(["bad"]) == {}
        finally:
            await cache.aclose()
            await probe.aclose()

    asyncio.run(scenario())


def test_a_dead_redis_reads_as_misses_not_errors() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        cache = create_embedding_cache(cache_config(redis_url=f"redis://127.0.0.1:{free_port()}/0"), clock)
        try:
            assert await cache.get_many(["a", "b"]) == {}
            assert cache.stats()["l2_errors"] == 1 and cache.stats()["misses"] == 2
            await cache.set_many({"a": cached_embedding([1.0], 1)})     # L2 write skipped while Redis is in back-off
            assert cache.stats()["l2_errors"] == 1
            assert (await cache.get_many(["a"]))[0].vector.tolist() == [1.0]  # L1 still serves
            clock.advance(10)
            await cache.set_many({"b": cached_embedding([2.0], 1)})  # back-off over: tries Redis again, fails quietly
            assert cache.stats()["l2_errors"] == 2
            assert await cache.clear() == 2
        finally:
            await cache.aclose()

    asyncio.run(scenario())
