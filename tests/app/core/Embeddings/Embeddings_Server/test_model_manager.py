"""ModelCache (LRU, count and memory caps, in-use protection, idle unload with an injected clock),
the eviction planner, the idle sweeper loop and the download tracker, without any model."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_manager import (
    CacheLimits,
    DownloadTracker,
    IdleSweeper,
    ModelCache,
    SlotView,
    plan_evictions,
    sweep_interval,
)

MB = 2**20


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cache(max_models: int = 2, max_mb: int = 0, idle_s: float = 0) -> tuple[ModelCache[str], FakeClock]:
    clock = FakeClock()
    return ModelCache(CacheLimits(max_models, max_mb * MB, idle_s), clock=clock), clock


def _within_caps_or_all_in_use(cache: ModelCache[str], sizes: dict[str, int]) -> None:
    loaded = cache.loaded()
    over = len(loaded) > cache.limits.max_models or (
        cache.limits.max_bytes > 0 and sum(sizes[m] for m in loaded) > cache.limits.max_bytes)
    if over:  # only in-use models may keep the cache over a cap
        assert all(cache.in_use(m) for m in loaded), (loaded, sizes)


# --- the pure planner ---------------------------------------------------------------------------
def test_plan_evicts_least_recently_used_idle_first() -> None:
    slots = [SlotView("a", MB, False), SlotView("b", MB, True), SlotView("c", MB, False)]
    assert plan_evictions(slots, CacheLimits(2, 0, 0)) == ["a"]
    assert plan_evictions(slots, CacheLimits(1, 0, 0)) == ["a", "c"]          # b is in use: stays
    assert plan_evictions(slots, CacheLimits(3, 0, 0), extra_count=1) == ["a"]
    assert plan_evictions(slots, CacheLimits(9, 2 * MB, 0)) == ["a"]
    assert plan_evictions(slots, CacheLimits(9, 2 * MB, 0), extra_bytes=MB) == ["a", "c"]
    assert plan_evictions(slots, CacheLimits(9, 0, 0), extra_bytes=10**12) == []   # 0: no memory cap


@settings(max_examples=200, deadline=None)
@given(
    max_models=st.integers(1, 4),
    max_mb=st.integers(0, 12),
    ops=st.lists(st.tuples(st.sampled_from(["put", "get", "acquire", "release", "idle", "room", "remove", "tick"]),
                           st.integers(0, 5), st.integers(1, 6)), max_size=60),
)
def test_cache_never_exceeds_caps_except_for_models_in_use(max_models: int, max_mb: int,
                                                           ops: list[tuple[str, int, int]]) -> None:
    cache, clock = _cache(max_models, max_mb, idle_s=5)
    sizes: dict[str, int] = {}
    held: list[str] = []                       # one entry per acquire not yet released
    for op, index, amount in ops:
        model_id = f"m{index}"
        protected = {m for m in held if m in cache}
        if op == "put":
            cache.acquire(model_id)            # a model is loaded inside a request that uses it
            held.append(model_id)
            sizes[model_id] = amount * MB
            cache.put(model_id, f"handle-{model_id}", sizes[model_id])
            protected.add(model_id)
        elif op == "acquire":
            cache.acquire(model_id)
            held.append(model_id)
        elif op == "release" and held:
            released = held.pop(index % len(held))
            for evicted_id, handle in cache.release(released):
                assert handle == f"handle-{evicted_id}"
        elif op == "get" and model_id in cache:
            assert cache.get(model_id) == f"handle-{model_id}"
        elif op == "idle":
            cache.evict_idle()
        elif op == "room":
            cache.make_room(amount * MB)
        elif op == "remove":
            cache.remove(model_id)
        elif op == "tick":
            clock.now += amount
        still_held = {m for m in protected if m in held}
        assert still_held <= set(cache.loaded()), "a model in use was evicted"
        _within_caps_or_all_in_use(cache, sizes)
    while held:
        cache.release(held.pop())
    _within_caps_or_all_in_use(cache, sizes)
    assert not any(cache.in_use(m) for m in sizes)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["use", "done", "load", "idle", "room", "tick"]), st.integers(0, 3)),
                    max_size=40))
def test_models_in_use_are_never_evicted(ops: list[tuple[str, int]]) -> None:
    cache, clock = _cache(max_models=1, max_mb=1, idle_s=1)
    in_use: set[str] = set()
    for op, index in ops:
        model_id = f"m{index}"
        protected = in_use & set(cache.loaded())
        if op == "use" and model_id not in in_use:
            cache.acquire(model_id)
            in_use.add(model_id)
        elif op == "done" and model_id in in_use:
            in_use.discard(model_id)
            protected.discard(model_id)
            cache.release(model_id)
        elif op == "load":
            cache.acquire(model_id)
            cache.put(model_id, model_id, 3 * MB)   # bigger than the whole memory cap
            cache.release(model_id)
        elif op == "idle":
            cache.evict_idle()
        elif op == "room":
            cache.make_room(MB)
        else:
            clock.now += 10
        assert protected <= set(cache.loaded())


def test_lru_order_follows_use() -> None:
    cache, clock = _cache(max_models=2)
    for model_id in ("a", "b"):
        cache.acquire(model_id)
        cache.put(model_id, model_id, MB)
        cache.release(model_id)
    clock.now += 1
    assert cache.get("a") == "a"               # a becomes most recent
    cache.acquire("c")
    evicted = cache.put("c", "c", MB)
    assert evicted == [("b", "b")]
    assert cache.loaded() == ["a", "c"]


def test_memory_cap_evicts_until_the_new_model_fits() -> None:
    cache, _ = _cache(max_models=10, max_mb=10)
    for model_id, size in (("a", 4), ("b", 4)):
        cache.acquire(model_id)
        cache.put(model_id, model_id, size * MB)
        cache.release(model_id)
    assert cache.make_room(3 * MB) == [("a", "a")]
    assert cache.total_bytes == 4 * MB
    assert cache.make_room(2 * MB) == []


def test_model_over_the_caps_stays_while_in_use_then_goes() -> None:
    cache, _ = _cache(max_models=1, max_mb=1)
    cache.acquire("big")
    assert cache.put("big", "big", 5 * MB) == []
    assert cache.loaded() == ["big"]
    assert cache.release("big") == [("big", "big")]
    assert cache.loaded() == []


def test_idle_models_unload_after_the_timeout_only() -> None:
    cache, clock = _cache(max_models=5, idle_s=30)
    for model_id in ("a", "b"):
        cache.acquire(model_id)
        cache.put(model_id, model_id, MB)
        cache.release(model_id)
    clock.now += 20
    cache.get("b")
    assert cache.evict_idle() == []
    clock.now += 11                             # a: idle 31 s; b: 11 s
    assert cache.evict_idle() == [("a", "a")]
    cache.acquire("b")
    clock.now += 100
    assert cache.evict_idle() == []             # in use: never idle
    cache.release("b")
    assert cache.evict_idle(now=clock.now + 29) == []
    assert cache.evict_idle(now=clock.now + 31) == [("b", "b")]


def test_idle_timeout_zero_never_unloads() -> None:
    cache, clock = _cache(idle_s=0)
    cache.acquire("a")
    cache.put("a", "a", MB)
    cache.release("a")
    clock.now += 10**9
    assert cache.evict_idle() == []


def test_remove_refuses_models_in_use_and_release_needs_acquire() -> None:
    cache, _ = _cache()
    cache.acquire("a")
    cache.put("a", "a", MB)
    assert cache.remove("a") == []
    cache.release("a")
    assert cache.remove("a") == [("a", "a")]
    with pytest.raises(RuntimeError):
        cache.release("a")


def test_use_context_releases_and_reports_evictions() -> None:
    cache, _ = _cache(max_models=1)
    seen: list[list[tuple[str, str]]] = []

    async def on_evicted(evicted: list[tuple[str, str]]) -> None:
        seen.append(list(evicted))

    async def run() -> None:
        async with cache.use("a", on_evicted):
            cache.put("a", "a", MB)
            async with cache.use("b", on_evicted):
                cache.put("b", "b", MB)
                assert cache.loaded() == ["a", "b"]     # both in use: over the cap
                assert cache.in_use("a") and cache.in_use("b")
        assert not cache.in_use("a")

    asyncio.run(run())
    assert seen == [[("b", "b")]]      # b's release: a (least recent) is still in use, so b goes
    assert cache.loaded() == ["a"]


def test_sweep_interval_bounds() -> None:
    assert sweep_interval(0.01) == 0.05
    assert sweep_interval(8) == 2
    assert sweep_interval(10_000) == 60


def test_sweeper_calls_sweep_each_interval_and_stops() -> None:
    async def run() -> None:
        ticks: asyncio.Queue[None] = asyncio.Queue()
        sweeps: asyncio.Queue[int] = asyncio.Queue()
        intervals: list[float] = []
        count = 0

        async def sleep(seconds: float) -> None:
            intervals.append(seconds)
            await ticks.get()

        async def sweep() -> None:
            nonlocal count
            count += 1
            await sweeps.put(count)
            if count == 2:
                raise RuntimeError("a failing sweep must not stop the sweeper")

        sweeper = IdleSweeper(sweep, 7.5, sleep=sleep)
        sweeper.ensure_running()
        sweeper.ensure_running()                        # idempotent: one task
        for expected in (1, 2, 3):
            await ticks.put(None)
            assert await asyncio.wait_for(sweeps.get(), 5) == expected
        assert sweeper.running and set(intervals) == {7.5}
        await sweeper.aclose()
        assert not sweeper.running

    asyncio.run(run())


def test_sweeper_restarts_on_a_new_loop() -> None:
    calls: list[int] = []

    async def sweep() -> None:
        calls.append(1)

    async def sleep(_seconds: float) -> None:
        await asyncio.sleep(0)

    sweeper = IdleSweeper(sweep, 1, sleep=sleep)

    async def run_once() -> None:
        before = len(calls)
        sweeper.ensure_running()
        while len(calls) == before:
            await asyncio.sleep(0)

    asyncio.run(run_once())        # asyncio.run cancels the task when its loop ends
    asyncio.run(run_once())
    assert len(calls) >= 2
    asyncio.run(sweeper.aclose())


def test_download_tracker_joins_running_downloads_and_remembers_failures() -> None:
    clock = FakeClock()
    release = threading.Event()
    runs: list[str] = []

    def slow() -> str:
        runs.append("slow")
        release.wait(10)
        return "done"

    def failing() -> str:
        runs.append("fail")
        raise ValueError("hub says no")

    with ThreadPoolExecutor(max_workers=2) as executor:
        tracker = DownloadTracker(executor, failure_ttl_s=60, clock=clock)
        first = tracker.start("m", slow)
        assert tracker.start("m", slow) is first and tracker.running("m")
        release.set()
        assert first.result(10) == "done"
        assert tracker.recent_failure("m") is None
        broken = tracker.start("x", failing)
        with pytest.raises(ValueError):
            broken.result(10)
        assert isinstance(tracker.recent_failure("x"), ValueError)
        clock.now += 61
        assert tracker.recent_failure("x") is None
        tracker.start("x", failing).exception(10)
        assert isinstance(tracker.recent_failure("x"), ValueError)
        assert tracker.start("x", lambda: "ok").result(10) == "ok"   # an explicit new start retries
        assert tracker.recent_failure("x") is None
    assert runs == ["slow", "fail", "fail"]


def test_download_tracker_handles_downloads_that_finish_at_once() -> None:
    class InlineExecutor(ThreadPoolExecutor):
        """Runs the job before submit returns, like a download that fails immediately."""

        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
            future = super().submit(fn, *args, **kwargs)
            future.exception(10)
            return future

    def failing() -> str:
        raise ValueError("offline")

    with InlineExecutor(max_workers=1) as executor:
        tracker = DownloadTracker(executor)
        assert isinstance(tracker.start("m", failing).exception(10), ValueError)
        assert isinstance(tracker.recent_failure("m"), ValueError) and not tracker.running("m")
