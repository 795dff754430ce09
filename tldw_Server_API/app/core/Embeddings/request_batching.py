"""Continuous micro-batching of concurrent embedding requests for one loaded model.

Every request's texts are tokenised as they arrive and join one pool of rows. Up to
`parallel_passes` worker tasks run forward passes over that pool off the event loop, each one
pass at a time: each pass is the fullest length-homogeneous run of rows (padded-token budget,
`next_pass`) that includes the oldest row waiting, so rows of many requests share a pass,
padding stays low, and no row waits behind more than the passes ahead of it -- except that a
request whose rows fit one pass (a query) goes ahead of the older rows of a bigger one, one pass
at a time (every other pass stays the oldest row's), so a search never waits for a whole
1,000-text request. A second worker
starts only while rows wait (after another request arrives, or when a pass leaves rows of a big
one behind), so a lone small request has the model (and its threads) to itself. A
request is answered as soon as its last row is done; its caller's next request joins the pool
while other passes run, so the pool stays full under load and a lone request (a search query)
runs at once. Right after a pass, a next pass that would run under its budget may wait up to
`max_wait_ms` for more rows (0: never); a worker that found the pool empty starts the next
arrival at once. A full pool answers `Overloaded` (429) at once instead of queueing forever.
`run_pass` learns whether its pass is lone: no other pass of this batcher running and no row
left waiting (the provider may then run a small one without a thread hand-off).

`choose_pass` is the pure scheduling rule; `MicroBatcher` the asyncio plumbing around it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tldw_Server_API.app.core.config import BatchingConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_encoding import next_pass
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.provider_types import EmbeddingBatch
from tldw_Server_API.app.core.errors import Overloaded, ServiceUnavailable
from tldw_Server_API.app.core.tracing import record_span

Tokenize = Callable[[list[str]], Awaitable[list[list[int]]]]      # texts -> token ids per text
RunPass = Callable[[list[list[int]], bool], Awaitable[np.ndarray]]  # (token rows, lone) -> (rows, d) vectors


def choose_pass(rows: Sequence[tuple[int, int]], max_padded_tokens: int, max_rows: int,
                anchor_seq: int | None = None) -> list[int]:
    """Indices of `rows` ((arrival sequence, token length) each) for the next forward pass: rows
    sorted longest first, the `next_pass` around the oldest row (its longest among equals), or
    around the rows of request `anchor_seq` when given (and present)."""
    if not rows:
        return []
    order = sorted(range(len(rows)), key=lambda i: (-rows[i][1], rows[i][0]))
    seqs = {seq for seq, _ in rows}
    target = anchor_seq if anchor_seq in seqs else min(seqs)
    anchor = next(pos for pos, i in enumerate(order) if rows[i][0] == target)
    span = next_pass([rows[i][1] for i in order], anchor, max_padded_tokens, max_rows)
    return [order[pos] for pos in span]


@dataclass
class _Request:
    future: asyncio.Future[EmbeddingBatch] = field(repr=False)
    token_counts: list[int]                 # one per text, in order
    remaining: int                          # rows not yet run
    vectors: np.ndarray | None = None
    queued_ns: int = 0                      # when it joined the pool; when its first pass started
    started_ns: int = 0
    fits_one_pass: bool = False             # its rows alone fit one pass's budget: it may go ahead of a big one


@dataclass
class _Row:
    request: _Request
    index: int            # position in its request
    seq: int              # arrival order of its request
    ids: list[int]


class MicroBatcher:
    def __init__(self, tokenize: Tokenize, run_pass: RunPass, config: BatchingConfig) -> None:
        self._tokenize = tokenize
        self._run_pass = run_pass
        self._config = config
        self.loop = asyncio.get_running_loop()  # asyncio primitives below belong to this loop
        self._pool: list[_Row] = []
        self._admitted = 0                      # texts accepted and not yet answered or dropped
        self._seq = itertools.count()
        self._arrived = asyncio.Event()
        self._workers: set[asyncio.Task[None]] = set()
        self._running = 0                       # passes in progress
        self._jumped = False                    # the last pass went ahead of older rows: the next may not
        self.batches_run = 0
        self.last_batch_sizes: deque[int] = deque(maxlen=256)
        self.busy_seconds = 0.0                 # inside forward passes
        self.tokens_run = 0                     # real tokens of the rows run
        self.padded_tokens_run = 0              # rows x longest row, summed over passes
        self.rows_run = 0                       # rows (texts) run, summed over passes

    @property
    def queued_texts(self) -> int:
        return self._admitted

    async def submit(self, texts: Sequence[str]) -> EmbeddingBatch:
        if not texts:
            return EmbeddingBatch(vectors=np.zeros((0, 0), dtype=np.float32), token_counts=[])
        if self._admitted + len(texts) > self._config.max_queue_texts:
            raise Overloaded("the embedding queue is full; retry shortly", retry_after=1)
        self._admitted += len(texts)
        try:
            ids = await self._tokenize(list(texts))
        except BaseException:
            self._admitted -= len(texts)
            raise
        request = _Request(self.loop.create_future(), [len(row) for row in ids], remaining=len(ids),
                           queued_ns=time.time_ns(), fits_one_pass=self._fits_one_pass(ids))
        seq = next(self._seq)
        self._pool.extend(_Row(request, i, seq, row) for i, row in enumerate(ids))
        self._add_worker()
        self._arrived.set()
        result = await request.future   # a caller who leaves cancels it: its rows are dropped before the next pass
        done = time.time_ns()
        record_span("batcher.queue", request.queued_ns, request.started_ns or done, texts=len(texts))
        record_span("model.inference", request.started_ns or done, done, texts=len(texts))
        return result

    def _add_worker(self) -> None:
        """One more worker, up to `parallel_passes`: on each arrival, and whenever a worker takes a
        pass and rows still wait (one request of many rows must not run a pass at a time)."""
        # Count live workers only: one whose pool ran dry is done, and must not stand in for a new one.
        self._workers = {worker for worker in self._workers if not worker.done()}
        if len(self._workers) < max(1, self._config.parallel_passes):
            self._workers.add(asyncio.create_task(self._work(), name="micro-batcher"))

    def _fits_one_pass(self, ids: list[list[int]]) -> bool:
        """Its rows run as one pass: within the pass budget, or one row (`next_pass` runs a row
        longer than the budget alone)."""
        return len(ids) == 1 or (
            len(ids) <= self._config.max_batch_rows
            and len(ids) * max((len(row) for row in ids), default=0) <= self._config.max_padded_tokens)

    def _anchor(self) -> int | None:
        """The request the next pass forms around: None (the oldest row's), or the oldest request
        that fits one pass while older rows of a bigger request wait, so a query never waits for
        a whole bulk request. Such a pass is never followed by another: the oldest rows still get
        every other pass."""
        if self._jumped or not self._pool:
            self._jumped = False
            return None
        oldest = min(row.seq for row in self._pool)
        small = min((row.seq for row in self._pool if row.request.fits_one_pass), default=None)
        if small is None or small == oldest:
            return None
        self._jumped = True
        return small

    def _drop_abandoned(self) -> None:
        kept = [row for row in self._pool if not row.request.future.done()]
        self._admitted -= len(self._pool) - len(kept)
        self._pool = kept

    async def _wait_for_company(self) -> None:
        """Right after a pass, let a next pass under its budget wait up to `max_wait_ms` for
        more rows (the callers the last pass answered are coming back)."""
        deadline = time.monotonic() + self._config.max_wait_ms / 1000
        while sum(len(row.ids) for row in self._pool) < self._config.max_padded_tokens:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _work(self) -> None:
        after_pass = False
        while self._pool:
            if after_pass and self._config.max_wait_ms > 0:
                await self._wait_for_company()
            after_pass = True
            self._drop_abandoned()
            picked = choose_pass([(row.seq, len(row.ids)) for row in self._pool],
                                 self._config.max_padded_tokens, self._config.max_batch_rows, self._anchor())
            if not picked:
                continue
            chosen = set(picked)
            taken = [self._pool[i] for i in picked]
            self._pool = [row for i, row in enumerate(self._pool) if i not in chosen]
            if self._pool:
                self._add_worker()
            await self._run(taken)

    async def _run(self, rows: list[_Row]) -> None:
        self.batches_run += 1
        self.rows_run += len(rows)
        self.last_batch_sizes.append(len(rows))
        self._admitted -= len(rows)
        self.tokens_run += sum(len(row.ids) for row in rows)
        self.padded_tokens_run += len(rows) * max(len(row.ids) for row in rows)
        started = time.perf_counter()
        now_ns = time.time_ns()
        for row in rows:
            row.request.started_ns = row.request.started_ns or now_ns
        lone = not self._pool and self._running == 0
        self._running += 1
        try:
            vectors = await self._run_pass([row.ids for row in rows], lone)
        except Exception as exc:  # fails the requests of this pass; their other rows are dropped
            for request in {id(row.request): row.request for row in rows}.values():
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        finally:
            self._running -= 1
            self.busy_seconds += time.perf_counter() - started
        for row, vector in zip(rows, vectors, strict=True):
            request = row.request
            if request.future.done():
                continue
            if request.vectors is None:
                request.vectors = np.empty((len(request.token_counts), vectors.shape[1]), dtype=np.float32)
            request.vectors[row.index] = vector
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result(EmbeddingBatch(vectors=request.vectors, token_counts=request.token_counts))

    def stats(self) -> dict[str, Any]:
        return {"queued_texts": self.queued_texts, "batches_run": self.batches_run, "rows_run": self.rows_run,
                "tokens_run": self.tokens_run, "padded_tokens_run": self.padded_tokens_run,
                "recent_batch_sizes": list(self.last_batch_sizes)[-8:], "busy_seconds": round(self.busy_seconds, 3),
                "padding_efficiency": round(self.tokens_run / self.padded_tokens_run, 4)
                if self.padded_tokens_run else None}

    async def aclose(self) -> None:
        """Stop the workers; callers still waiting get `ServiceUnavailable` rather than hanging."""
        workers = [worker for worker in self._workers if not worker.done()]
        self._workers.clear()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for row in self._pool:
            if not row.request.future.done():
                row.request.future.set_exception(
                    ServiceUnavailable("the model was unloaded; retry", retry_after=1, code="model_unloaded"))
        self._pool.clear()
        self._admitted = 0
