"""Micro-batching of concurrent embedding requests for one loaded model.

Requests queue their texts; one worker task takes whole requests in arrival order up to a token
budget, runs them as one model call (the encoder length-sorts inside it) and hands each request its own rows. While a
batch runs, the next one gathers, so concurrency turns into bigger, better-packed batches. Before
each call the worker waits while requests keep arriving (a gap of `quiet_ms`, at most
`max_wait_ms` in all): clients released together by one batch come back over a few milliseconds,
and a fixed short wait would split them into a small batch and a large one. A full
queue answers `Overloaded` (429) at once instead of queueing forever.

`take_count` is the pure planning rule; `MicroBatcher` the asyncio plumbing around it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tldw_Server_API.app.core.config import BatchingConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import EmbeddingBatch
from tldw_Server_API.app.core.errors import Overloaded

RunBatch = Callable[[list[str]], Awaitable[EmbeddingBatch]]


def estimate_tokens(text: str) -> int:
    """Rough token count for budgeting only (~4 characters a token, plus special tokens)."""
    return len(text) // 4 + 2


def take_count(sizes: Sequence[int], budget: int) -> int:
    """How many leading requests (token sizes) form the next batch: whole requests, in order,
    while they fit the budget; always at least one, so an oversized request still runs alone."""
    total, count = 0, 0
    for size in sizes:
        if count and total + size > budget:
            break
        total += size
        count += 1
    return count


@dataclass
class _Request:
    texts: list[str]
    tokens: int
    future: asyncio.Future[EmbeddingBatch] = field(repr=False)


class MicroBatcher:
    def __init__(self, run_batch: RunBatch, config: BatchingConfig) -> None:
        self._run_batch = run_batch
        self._config = config
        self.loop = asyncio.get_running_loop()  # asyncio primitives below belong to this loop
        self._queue: deque[_Request] = deque()
        self._queued_texts = 0
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.batches_run = 0
        self.last_batch_sizes: deque[int] = deque(maxlen=256)

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    async def submit(self, texts: Sequence[str], token_counts: Sequence[int] | None = None) -> EmbeddingBatch:
        if self._queued_texts + len(texts) > self._config.max_queue_texts:
            raise Overloaded("the embedding queue is full; retry shortly", retry_after=1)
        tokens = sum(token_counts) if token_counts is not None else sum(map(estimate_tokens, texts))
        request = _Request(list(texts), tokens, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        self._queued_texts += len(texts)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name="micro-batcher")
        self._wakeup.set()
        return await request.future

    def _take(self) -> list[_Request]:
        live = [r for r in self._queue if not r.future.done()]  # drop requests whose caller left
        count = take_count([r.tokens for r in live], self._config.max_batch_tokens)
        taken = live[:count]
        self._queue = deque(live[count:])
        self._queued_texts = sum(len(r.texts) for r in self._queue)
        return taken

    async def _gather_company(self) -> None:
        deadline = time.monotonic() + self._config.max_wait_ms / 1000
        while sum(r.tokens for r in self._queue) < self._config.max_batch_tokens:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), min(self._config.quiet_ms / 1000, remaining))
            except TimeoutError:
                return  # nobody arrived within the quiet gap

    async def _work(self) -> None:
        while self._queue:
            if self._config.max_wait_ms > 0:
                await self._gather_company()
            batch = self._take()
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Request]) -> None:
        texts = [text for request in batch for text in request.texts]
        self.batches_run += 1
        self.last_batch_sizes.append(len(texts))
        try:
            result = await self._run_batch(texts)
        except Exception as exc:  # delivered to every caller of this batch; the worker lives on
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        start = 0
        for request in batch:
            end = start + len(request.texts)
            if not request.future.done():
                request.future.set_result(EmbeddingBatch(
                    vectors=np.ascontiguousarray(result.vectors[start:end]),
                    token_counts=list(result.token_counts[start:end]),
                ))
            start = end

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
