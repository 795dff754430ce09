"""The threads a local provider's forward passes run on: one *lone* thread, for a pass that has
the model to itself (a search query on an idle server, a single-pass `encode`), and `parallel`
shared threads, for passes that run beside others (with one, the lone thread does both).

Why one fixed thread for lone passes: torch's OpenMP runtime (libgomp) keeps a pool of worker
threads for every thread that ever ran a parallel region wider than one thread, for as long as
that thread lives. Once the pools together hold more threads than there are CPUs, libgomp spins
only ~100 times at each barrier before sleeping, so each of a pass's ~100 operators pays a
futex wake-up of a sleeping worker. Measured on a 2-vCPU VM (MiniLM, one 16-token text, 2
threads): 5-7 ms with one wide pool in the process, 13-19 ms with a second one alive (a thread
that once ran a lone pass at full width, then went idle). So only the lone thread is ever given
more than the shared width (`IntraOpShare(wide=...)`), and every pass -- the batcher's, and
`BatchEncoder.encode`'s from any caller thread (start-up measurement, warm-up, benchmarks) --
runs here, never on the caller's thread; a thread that loads or exports a model runs torch
single-threaded (`single_threaded_torch`). onnxruntime keeps one pool per session, not per
calling thread; its passes use the same threads for one rule.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


class PassThreads:
    def __init__(self, parallel: int, name: str) -> None:
        self.parallel = max(1, parallel)
        self._idents: set[int] = set()
        self._lone_ident: int | None = None
        self._guard = threading.Lock()
        self._lone = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-lone",
                                        initializer=self._started, initargs=(True,))
        self._shared = self._lone if self.parallel == 1 else ThreadPoolExecutor(
            max_workers=self.parallel, thread_name_prefix=f"{name}-pass", initializer=self._started,
            initargs=(False,))

    def _started(self, lone: bool) -> None:
        with self._guard:
            self._idents.add(threading.get_ident())
            if lone:
                self._lone_ident = threading.get_ident()

    def on_lone_thread(self) -> bool:
        """Whether the calling thread is the lone-pass thread (the one that may run wide)."""
        return threading.get_ident() == self._lone_ident

    def on_pass_thread(self) -> bool:
        return threading.get_ident() in self._idents

    def lone(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        return self._lone.submit(fn, *args)

    def shared(self, fn: Callable[..., R], *args: Any) -> Future[R]:
        return self._shared.submit(fn, *args)

    def run_all(self, fn: Callable[[T], Any], items: Sequence[T]) -> None:
        """`fn` over `items` from a caller outside these threads, waiting for all: one item on
        the lone thread, several on the shared threads. From one of these threads: in place, in
        order (a pass thread never waits for its own pool)."""
        if self.on_pass_thread():
            for item in items:
                fn(item)
        elif len(items) == 1:
            self._lone.submit(fn, items[0]).result()
        else:
            list(self._shared.map(fn, items))

    def shutdown(self) -> None:
        self._lone.shutdown(wait=True, cancel_futures=True)
        if self._shared is not self._lone:
            self._shared.shutdown(wait=True, cancel_futures=True)


def single_threaded_torch() -> None:
    """Run torch single-threaded on the calling thread (a loading or exporting thread), so it never
    owns a second wide OpenMP pool; the setting is the thread's own."""
    import torch

    torch.set_num_threads(1)
