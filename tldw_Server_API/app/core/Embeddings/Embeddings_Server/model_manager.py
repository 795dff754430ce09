"""Lifecycle policy of the models a local provider holds: `ModelCache` (LRU with a count cap, an
estimated-memory cap and idle unload; in-use models are never evicted), `IdleSweeper` (the asyncio
task that unloads idle models) and `DownloadTracker` (one background hub download per model).

Standard library and loguru only. Nothing here loads, frees or downloads a model: the cache hands
evicted handles back to its caller, which releases them. Time comes from an injected clock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor, Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from loguru import logger

H = TypeVar("H")
Clock = Callable[[], float]


@dataclass(frozen=True)
class CacheLimits:
    max_models: int                  # resident models; >= 1
    max_bytes: int                   # estimated weight bytes of all resident models; 0: no cap
    idle_timeout_s: float            # unload after this long unused; 0: never


@dataclass(frozen=True)
class SlotView:
    """What the eviction planner needs to know about one resident model."""

    model_id: str
    size_bytes: int
    in_use: bool


def plan_evictions(slots: Sequence[SlotView], limits: CacheLimits, extra_count: int = 0,
                   extra_bytes: int = 0) -> list[str]:
    """Ids to evict, least recently used first (`slots` is in LRU order), so that the residents
    plus `extra_count` models of `extra_bytes` fit both caps. In-use models are never chosen, so
    the result may leave the caps exceeded when only in-use models remain."""
    count = len(slots) + extra_count
    total = sum(s.size_bytes for s in slots) + extra_bytes
    chosen: list[str] = []
    for slot in slots:
        over_count = count > limits.max_models
        over_bytes = limits.max_bytes > 0 and total > limits.max_bytes
        if not (over_count or over_bytes):
            break
        if slot.in_use:
            continue
        chosen.append(slot.model_id)
        count -= 1
        total -= slot.size_bytes
    return chosen


@dataclass
class _Slot(Generic[H]):
    handle: H
    size_bytes: int
    last_used: float


Evicted = tuple[str, H]


class ModelCache(Generic[H]):
    """Resident models by id, in LRU order, plus a use count per id (held while a request runs,
    whether or not the model is resident yet). Thread-safe: the event loop and the inference
    thread both touch it. Every mutating call returns the (id, handle) pairs it evicted."""

    def __init__(self, limits: CacheLimits, clock: Clock = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._slots: OrderedDict[str, _Slot[H]] = OrderedDict()   # least recently used first
        self._users: Counter[str] = Counter()
        self._lock = threading.Lock()

    # --- reads --------------------------------------------------------------------------------
    def __contains__(self, model_id: object) -> bool:
        with self._lock:
            return model_id in self._slots

    def loaded(self) -> list[str]:
        """Resident ids, least recently used first."""
        with self._lock:
            return list(self._slots)

    def in_use(self, model_id: str) -> bool:
        with self._lock:
            return self._users[model_id] > 0

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(s.size_bytes for s in self._slots.values())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            return {
                "loaded": len(self._slots), "max_models": self.limits.max_models,
                "estimated_mb": round(sum(s.size_bytes for s in self._slots.values()) / 2**20, 1),
                "max_memory_mb": self.limits.max_bytes // 2**20,
                "models": {mid: {"in_use": self._users[mid], "idle_s": round(now - s.last_used, 3),
                                 "estimated_mb": round(s.size_bytes / 2**20, 1)} for mid, s in self._slots.items()},
            }

    # --- use counts ---------------------------------------------------------------------------
    def get(self, model_id: str) -> H | None:
        """The handle, marked most recently used; None when not resident."""
        with self._lock:
            slot = self._slots.get(model_id)
            if slot is None:
                return None
            self._touch(model_id, slot)
            return slot.handle

    def acquire(self, model_id: str) -> None:
        with self._lock:
            self._users[model_id] += 1
            if model_id in self._slots:
                self._touch(model_id, self._slots[model_id])

    def release(self, model_id: str) -> list[Evicted[H]]:
        """Drop one use; models kept over the caps only because they were in use may go now."""
        with self._lock:
            if self._users[model_id] <= 0:
                raise RuntimeError(f"release of {model_id!r} without a matching acquire")
            self._users[model_id] -= 1
            if self._users[model_id] == 0:
                del self._users[model_id]
            if model_id in self._slots:
                self._slots[model_id].last_used = self._clock()
            return self._evict(plan_evictions(self._views(), self.limits))

    @asynccontextmanager
    async def use(self, model_id: str,
                  on_evicted: Callable[[list[Evicted[H]]], Awaitable[None]] | None = None) -> AsyncIterator[None]:
        """Hold `model_id` in use for the block; evictions its release allows go to `on_evicted`."""
        self.acquire(model_id)
        try:
            yield
        finally:
            evicted = self.release(model_id)
            if evicted and on_evicted is not None:
                await on_evicted(evicted)

    # --- residency ----------------------------------------------------------------------------
    def make_room(self, size_bytes: int) -> list[Evicted[H]]:
        """Evict idle models so that one more model of `size_bytes` fits (before loading it)."""
        with self._lock:
            return self._evict(plan_evictions(self._views(), self.limits, 1, size_bytes))

    def put(self, model_id: str, handle: H, size_bytes: int) -> list[Evicted[H]]:
        with self._lock:
            self._slots.pop(model_id, None)
            self._slots[model_id] = _Slot(handle, max(0, size_bytes), self._clock())
            return self._evict(plan_evictions(self._views(), self.limits))

    def evict_idle(self, now: float | None = None) -> list[Evicted[H]]:
        """Models unused for longer than the idle timeout (none when the timeout is 0)."""
        timeout = self.limits.idle_timeout_s
        if timeout <= 0:
            return []
        with self._lock:
            now = self._clock() if now is None else now
            idle = [mid for mid, s in self._slots.items() if not self._users[mid] and now - s.last_used > timeout]
            return self._evict(idle)

    def remove(self, model_id: str) -> list[Evicted[H]]:
        """Unload one model now unless it is in use (then nothing happens)."""
        with self._lock:
            return [] if self._users[model_id] else self._evict([model_id] if model_id in self._slots else [])

    def clear(self) -> list[Evicted[H]]:
        """Everything, in use or not (shutdown)."""
        with self._lock:
            evicted = [(mid, s.handle) for mid, s in self._slots.items()]
            self._slots.clear()
            return evicted

    # --- internals (lock held) ----------------------------------------------------------------
    def _touch(self, model_id: str, slot: _Slot[H]) -> None:
        slot.last_used = self._clock()
        self._slots.move_to_end(model_id)

    def _views(self) -> list[SlotView]:
        return [SlotView(mid, s.size_bytes, self._users[mid] > 0) for mid, s in self._slots.items()]

    def _evict(self, model_ids: Sequence[str]) -> list[Evicted[H]]:
        return [(mid, self._slots.pop(mid).handle) for mid in model_ids]


def sweep_interval(idle_timeout_s: float) -> float:
    """How often to look for idle models: a quarter of the timeout, within [50 ms, 60 s]."""
    return min(max(idle_timeout_s / 4, 0.05), 60.0)


class IdleSweeper:
    """Calls `sweep` every `interval_s` on the running loop, started lazily and restarted when the
    loop it ran on is gone. `sleep` is injectable so tests can step it."""

    def __init__(self, sweep: Callable[[], Awaitable[object]], interval_s: float,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self._sweep = sweep
        self._interval_s = interval_s
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def ensure_running(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._loop(), name="model-idle-sweeper")

    async def _loop(self) -> None:
        while True:
            await self._sleep(self._interval_s)
            try:
                await self._sweep()
            except Exception:  # a failed sweep must not end the sweeper
                logger.exception("model idle sweep failed")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is None or task.done():
            return
        task.cancel()
        if task.get_loop() is asyncio.get_running_loop():
            try:
                await task
            except asyncio.CancelledError:
                pass


class DownloadTracker:
    """At most one background download per key, on `executor`; a failure is remembered for
    `failure_ttl_s` so callers asking again meanwhile get it at once instead of a new attempt."""

    def __init__(self, executor: Executor, failure_ttl_s: float = 60.0, clock: Clock = time.monotonic) -> None:
        self._executor = executor
        self._failure_ttl_s = failure_ttl_s
        self._clock = clock
        self._running: dict[str, Future[Any]] = {}
        self._failures: dict[str, tuple[float, BaseException]] = {}
        self._lock = threading.Lock()

    def start(self, key: str, fn: Callable[[], Any]) -> Future[Any]:
        """The running download of `key`, or a new one."""
        with self._lock:
            future = self._running.get(key)
            if future is not None and not future.done():
                return future
            self._failures.pop(key, None)
            future = self._running[key] = self._executor.submit(fn)
        # Outside the lock: a future that is already done runs the callback right here.
        future.add_done_callback(lambda done: self._finished(key, done))
        return future

    def _finished(self, key: str, future: Future[Any]) -> None:
        with self._lock:
            if self._running.get(key) is future:
                del self._running[key]
            error = None if future.cancelled() else future.exception()
            if error is not None:
                self._failures[key] = (self._clock(), error)

    def running(self, key: str) -> bool:
        with self._lock:
            return key in self._running

    def recent_failure(self, key: str) -> BaseException | None:
        with self._lock:
            entry = self._failures.get(key)
            if entry is None:
                return None
            if self._clock() - entry[0] > self._failure_ttl_s:
                del self._failures[key]
                return None
            return entry[1]
