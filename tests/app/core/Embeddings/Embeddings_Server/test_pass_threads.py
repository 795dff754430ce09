"""PassThreads: where a local provider's forward passes run (one lone thread, the shared ones)."""

from __future__ import annotations

import threading
import time

from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pass_threads import PassThreads


def _where(seen: list[int]) -> object:
    def record(_: object) -> None:
        seen.append(threading.get_ident())
        time.sleep(0.01)
    return record


def test_one_item_runs_on_the_lone_thread_several_on_the_shared_ones() -> None:
    threads = PassThreads(2, "t")
    try:
        lone: list[int] = []
        for _ in range(3):
            threads.run_all(_where(lone), [1])
            assert threads.lone(threads.on_lone_thread).result() is True
        assert len(set(lone)) == 1 and lone[0] != threading.get_ident()
        assert not threads.on_lone_thread() and not threads.on_pass_thread()
        shared: list[int] = []
        threads.run_all(_where(shared), list(range(8)))
        assert len(shared) == 8 and lone[0] not in shared and threading.get_ident() not in shared
        assert threads.shared(threads.on_lone_thread).result() is False
        assert threads.shared(threads.on_pass_thread).result() is True
    finally:
        threads.shutdown()


def test_from_a_pass_thread_work_runs_in_place_and_one_thread_does_all_with_parallel_one() -> None:
    threads = PassThreads(2, "t")
    try:
        nested: list[int] = []

        def outer() -> int:
            threads.run_all(_where(nested), [1, 2, 3])   # would wait for its own pool otherwise
            return threading.get_ident()

        outer_thread = threads.shared(outer).result(timeout=10)
        assert nested == [outer_thread] * 3
    finally:
        threads.shutdown()

    single = PassThreads(1, "s")
    try:
        seen: list[int] = []
        single.run_all(_where(seen), [1])
        single.run_all(_where(seen), [1, 2, 3])
        assert len(set(seen)) == 1 and single.shared(single.on_lone_thread).result() is True
    finally:
        single.shutdown()
