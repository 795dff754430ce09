"""The continuous micro-batcher: the pass rules (property-tested against brute force), every text
back exactly once to its own request in order under random concurrency, rows of concurrent
requests sharing passes, a lone request never waiting, the post-pass wait, bounded pool ->
Overloaded, failures, and callers that leave."""

from __future__ import annotations

import asyncio
import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tldw_Server_API.app.core.config import BatchingConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_encoding import (
    next_pass,
    pass_score,
    plan_padded_batches,
)
from tldw_Server_API.app.core.Embeddings.request_batching import MicroBatcher, choose_pass
from tldw_Server_API.app.core.errors import Overloaded, ServiceUnavailable

sorted_lengths = st.lists(st.integers(min_value=1, max_value=600), min_size=1, max_size=40).map(
    lambda xs: sorted(xs, reverse=True))


def fits(lengths: list[int], span: range, budget: int, max_rows: int) -> bool:
    return len(span) == 1 or (len(span) <= max_rows and len(span) * lengths[span.start] <= budget)


@given(sorted_lengths, st.data(), st.integers(min_value=16, max_value=5000), st.integers(min_value=1, max_value=64))
def test_next_pass_is_the_fullest_window_around_the_anchor(lengths: list[int], data: st.DataObject, budget: int,
                                                          max_rows: int) -> None:
    anchor = data.draw(st.integers(min_value=0, max_value=len(lengths) - 1))
    span = next_pass(lengths, anchor, budget, max_rows)
    assert span.start <= anchor < span.stop and span.step == 1
    assert fits(lengths, span, budget, max_rows)
    def score(i: int, j: int) -> float:
        return pass_score(sum(lengths[i:j]), j - i, lengths[i])

    best = max(score(i, j) for i in range(anchor + 1) for j in range(anchor + 1, len(lengths) + 1)
               if fits(lengths, range(i, j), budget, max_rows))
    assert score(span.start, span.stop) == pytest.approx(best, rel=1e-12)


def test_a_pass_does_not_pad_short_rows_up_to_a_long_one() -> None:
    # the oldest row (40 tokens) with one 250-token row: running it with three 40s beats padding it to 250
    assert next_pass([250, 40, 40, 40], 1, 1024, 256) == range(1, 4)
    assert next_pass([250, 40, 40, 40], 0, 1024, 256) == range(0, 1)


def test_next_pass_refuses_an_anchor_outside_the_rows() -> None:
    with pytest.raises(IndexError):
        next_pass([3, 2], 2, 100, 10)


@given(st.lists(st.integers(min_value=1, max_value=600), max_size=80).map(lambda xs: sorted(xs, reverse=True)),
       st.integers(min_value=16, max_value=10_000), st.integers(min_value=1, max_value=300))
def test_padded_batches_cover_every_text_once_within_budget(lengths: list[int], budget: int, max_rows: int) -> None:
    batches = plan_padded_batches(lengths, budget, max_rows)
    assert [i for span in batches for i in span] == list(range(len(lengths)))
    for span in batches:
        assert 1 <= len(span) <= max_rows
        assert len(span) == 1 or len(span) * lengths[span.start] <= budget


@given(st.lists(st.tuples(st.integers(min_value=0, max_value=20), st.integers(min_value=1, max_value=300)),
                min_size=1, max_size=60),
       st.integers(min_value=16, max_value=4000), st.integers(min_value=1, max_value=32))
def test_choose_pass_includes_the_oldest_row_and_drains_the_pool(rows: list[tuple[int, int]], budget: int,
                                                                 max_rows: int) -> None:
    left = list(range(len(rows)))
    seen: list[int] = []
    while left:
        picked = [left[i] for i in choose_pass([rows[k] for k in left], budget, max_rows)]
        assert picked and len(set(picked)) == len(picked)
        oldest = min(rows[k][0] for k in left)
        assert any(rows[k][0] == oldest for k in picked)           # FIFO: no row is starved
        widest = max(rows[k][1] for k in picked)
        assert len(picked) == 1 or (len(picked) <= max_rows and len(picked) * widest <= budget)
        seen += picked
        left = [k for k in left if k not in set(picked)]
    assert sorted(seen) == list(range(len(rows)))


def tokens_of(text: str) -> list[int]:
    return [ord(c) for c in text] or [0]


def fingerprint(ids: list[int]) -> list[float]:
    return [float(len(ids)), float(sum(ids) % 9973), float(ids.count(ord("x")))]


class RecordingModel:
    """The batcher's two injection points: a tokenizer (one id per character) and a forward pass
    with deterministic rows per token row; records every pass."""

    def __init__(self, fail_on: str | None = None, delay: float = 0.001) -> None:
        self.passes: list[list[list[int]]] = []
        self.lone: list[bool] = []          # per pass: what the batcher said of it
        self.fail_on = tokens_of(fail_on) if fail_on is not None else None
        self.delay = delay
        self.release: asyncio.Event | None = None
        self.running = self.peak = 0        # passes running now, and at most at once

    async def tokenize(self, texts: list[str]) -> list[list[int]]:
        await asyncio.sleep(0)
        return [tokens_of(t) for t in texts]

    async def run_pass(self, rows: list[list[int]], lone: bool = False) -> np.ndarray:
        self.passes.append(rows)
        self.lone.append(lone)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
            if self.release is not None:
                await self.release.wait()
            if self.fail_on is not None and self.fail_on in rows:
                raise RuntimeError("model failure")
            return np.array([fingerprint(r) for r in rows], dtype=np.float32)
        finally:
            self.running -= 1

    def batcher(self, **overrides: float) -> MicroBatcher:
        values = {"max_wait_ms": 0.0, "max_queue_texts": 10_000, "max_padded_tokens": 4096, "max_batch_rows": 256}
        values.update(overrides)
        return MicroBatcher(self.tokenize, self.run_pass, BatchingConfig(**values))  # type: ignore[arg-type]


requests_strategy = st.lists(
    st.lists(st.text(alphabet="abcx ", min_size=0, max_size=40), min_size=1, max_size=8), min_size=1, max_size=30
)


@settings(max_examples=40, deadline=None)
@given(requests_strategy, st.integers(min_value=8, max_value=200), st.integers(min_value=1, max_value=16),
       st.sampled_from([0.0, 0.5]), st.randoms(use_true_random=False))
def test_every_text_comes_back_once_to_its_request_in_order(
    requests: list[list[str]], budget: int, max_rows: int, wait_ms: float, rnd: random.Random
) -> None:
    async def scenario() -> None:
        model = RecordingModel()
        batcher = model.batcher(max_padded_tokens=budget, max_batch_rows=max_rows, max_wait_ms=wait_ms)

        async def client(texts: list[str]):  # type: ignore[no-untyped-def]
            await asyncio.sleep(rnd.random() / 1000)
            return await batcher.submit(texts)

        results = await asyncio.gather(*(client(texts) for texts in requests))
        for texts, result in zip(requests, results, strict=True):
            assert result.vectors.tolist() == [fingerprint(tokens_of(t)) for t in texts]
            assert result.token_counts == [len(tokens_of(t)) for t in texts]
        sent = sorted(map(tuple, (row for rows in model.passes for row in rows)))
        assert sent == sorted(tuple(tokens_of(t)) for texts in requests for t in texts)  # each text run once
        for rows in model.passes:
            assert len(rows) == 1 or (len(rows) <= max_rows and len(rows) * max(map(len, rows)) <= budget)
        stats = batcher.stats()   # the counters operators and the benchmarks read: what was run, exactly
        assert stats["batches_run"] == len(model.passes)
        assert stats["rows_run"] == sum(len(rows) for rows in model.passes)
        assert stats["tokens_run"] == sum(len(row) for rows in model.passes for row in rows)
        assert stats["padded_tokens_run"] == sum(len(rows) * max(map(len, rows)) for rows in model.passes)
        assert batcher.queued_texts == 0
        await batcher.aclose()

    asyncio.run(scenario())


def test_rows_of_concurrent_requests_share_passes() -> None:
    async def scenario() -> list[list[list[int]]]:
        model = RecordingModel(delay=0.01)
        batcher = model.batcher()
        await asyncio.gather(*(batcher.submit([f"text {i}"]) for i in range(20)))
        await batcher.aclose()
        return model.passes

    passes = asyncio.run(scenario())
    assert len(passes) < 20 and max(len(rows) for rows in passes) > 1


def test_a_lone_request_runs_at_once_whatever_the_wait() -> None:
    async def scenario() -> list[list[list[int]]]:
        model = RecordingModel()
        batcher = model.batcher(max_wait_ms=60_000)
        for text in ("first", "second"):   # both arrive at an idle batcher: neither waits a minute
            result = await asyncio.wait_for(batcher.submit([text]), timeout=5)
            assert result.vectors.tolist() == [fingerprint(tokens_of(text))]
        await batcher.aclose()
        return model.passes

    assert len(asyncio.run(scenario())) == 2


@pytest.mark.parametrize(("wait_ms", "expected"), [(2000.0, [["a"], ["b", "c"]]), (0.0, [["a"], ["b"], ["c"]])])
def test_after_a_pass_an_underfull_pass_waits_for_more_rows(wait_ms: float, expected: list[list[str]]) -> None:
    async def scenario() -> list[list[str]]:
        model = RecordingModel(delay=0)
        model.release = asyncio.Event()
        batcher = model.batcher(max_wait_ms=wait_ms)
        first = asyncio.ensure_future(batcher.submit(["a"]))
        while not model.passes:
            await asyncio.sleep(0.001)
        second = asyncio.ensure_future(batcher.submit(["b"]))   # arrives during the first pass
        await asyncio.sleep(0.01)
        model.release.set()
        await first
        await asyncio.sleep(0.05)                                # comes back after the first pass
        third = await batcher.submit(["c"])
        await second
        assert third.vectors.shape == (1, 3)
        await batcher.aclose()
        return [["".join(map(chr, row)) for row in rows] for rows in model.passes]

    assert asyncio.run(scenario()) == expected


def test_a_full_pool_answers_overloaded_at_once() -> None:
    async def scenario() -> list[object]:
        model = RecordingModel(delay=0.05)
        batcher = model.batcher(max_queue_texts=10)
        outcomes = await asyncio.gather(*(batcher.submit(["a", "b", "c"]) for _ in range(8)), return_exceptions=True)
        after = await batcher.submit(["still works"])
        assert after.vectors.shape == (1, 3)
        assert batcher.queued_texts == 0
        await batcher.aclose()
        return outcomes

    outcomes = asyncio.run(scenario())
    overloaded = [o for o in outcomes if isinstance(o, Overloaded)]
    served = [o for o in outcomes if not isinstance(o, BaseException)]
    assert overloaded and served and len(overloaded) + len(served) == 8
    assert all(o.retry_after == 1 for o in overloaded)


def test_a_failing_pass_fails_its_callers_and_the_batcher_lives_on() -> None:
    async def scenario() -> None:
        model = RecordingModel(fail_on="boom", delay=0.01)
        batcher = model.batcher(max_batch_rows=1)   # one row a pass: only the failing row's request fails
        results = await asyncio.gather(batcher.submit(["boom", "and more"]), batcher.submit(["fine"]),
                                       return_exceptions=True)
        assert isinstance(results[0], RuntimeError)
        assert results[1].vectors.tolist() == [fingerprint(tokens_of("fine"))]  # type: ignore[union-attr]
        ok = await batcher.submit(["fine again"])
        assert ok.vectors.tolist() == [fingerprint(tokens_of("fine again"))]
        assert batcher.queued_texts == 0
        await batcher.aclose()

    asyncio.run(scenario())


def test_rows_of_a_caller_that_left_are_never_run() -> None:
    async def scenario() -> list[list[list[int]]]:
        model = RecordingModel(delay=0)
        model.release = asyncio.Event()
        batcher = model.batcher(max_padded_tokens=16, max_batch_rows=1)
        first = asyncio.ensure_future(batcher.submit(["a"]))
        while not model.passes:
            await asyncio.sleep(0.001)
        leaving = asyncio.ensure_future(batcher.submit(["gone", "also gone"]))
        await asyncio.sleep(0.01)
        leaving.cancel()
        await asyncio.sleep(0)
        model.release.set()
        await first
        await batcher.submit(["z"])
        assert batcher.queued_texts == 0
        await batcher.aclose()
        return model.passes

    run = ["".join(map(chr, row)) for rows in asyncio.run(scenario()) for row in rows]
    assert run == ["a", "z"]


def test_closing_answers_waiting_callers_instead_of_leaving_them_hanging() -> None:
    async def scenario() -> BaseException | None:
        model = RecordingModel(delay=0)
        model.release = asyncio.Event()
        batcher = model.batcher(max_batch_rows=1)
        first = asyncio.ensure_future(batcher.submit(["a"]))
        while not model.passes:
            await asyncio.sleep(0.001)
        waiting = asyncio.ensure_future(batcher.submit(["b"]))
        await asyncio.sleep(0.01)
        await batcher.aclose()
        first.cancel()
        outcome = await asyncio.wait_for(asyncio.gather(waiting, return_exceptions=True), timeout=5)
        assert batcher.queued_texts == 0
        return outcome[0]

    outcome = asyncio.run(scenario())
    assert isinstance(outcome, ServiceUnavailable) and outcome.code == "model_unloaded"


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_passes_run_side_by_side_up_to_parallel_passes(parallel: int) -> None:
    """Rows waiting while a pass runs start a second pass (up to `parallel_passes` at once); a
    lone request still runs alone."""
    async def scenario() -> tuple[int, int]:
        model = RecordingModel(delay=0)
        model.release = asyncio.Event()
        batcher = model.batcher(max_queue_texts=100, max_padded_tokens=4, max_batch_rows=1, parallel_passes=parallel)
        lone = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.02)
        lone_peak = model.peak
        calls = [asyncio.ensure_future(batcher.submit([text])) for text in "bcde"]   # one row per pass
        await asyncio.sleep(0.02)
        model.release.set()
        results = await asyncio.gather(lone, *calls)
        assert [r.vectors.tolist() for r in results] == [[fingerprint(tokens_of(t))] for t in "abcde"]
        await batcher.aclose()
        return lone_peak, model.peak

    lone_peak, peak = asyncio.run(scenario())
    assert lone_peak == 1
    assert peak == parallel


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_one_request_of_many_rows_runs_its_passes_side_by_side(parallel: int) -> None:
    """A single request whose rows make several passes (one client sending 1,000 chunks, as
    LangChain does) uses every parallel pass too, not one pass at a time with the other threads
    idle; its first pass is not lone (rows wait behind it)."""
    async def scenario() -> tuple[int, list[bool]]:
        model = RecordingModel(delay=0)
        model.release = asyncio.Event()
        batcher = model.batcher(max_queue_texts=100, max_padded_tokens=4, max_batch_rows=1, parallel_passes=parallel)
        call = asyncio.ensure_future(batcher.submit(list("abcdef")))   # one row per pass
        await asyncio.sleep(0.02)
        model.release.set()
        result = await call
        assert result.vectors.tolist() == [fingerprint(tokens_of(t)) for t in "abcdef"]
        await batcher.aclose()
        return model.peak, model.lone

    peak, lone = asyncio.run(scenario())
    assert peak == parallel
    assert lone[0] is False


def test_choose_pass_forms_around_the_anchor_request_when_given() -> None:
    rows = [(0, 100), (0, 100), (1, 10), (0, 10)]          # (request, tokens)
    assert sorted(choose_pass(rows, 200, 8)) == [0, 1]      # the oldest request's longest rows
    assert sorted(choose_pass(rows, 200, 8, anchor_seq=1)) == [2, 3]   # around request 1's row
    assert sorted(choose_pass(rows, 200, 8, anchor_seq=7)) == [0, 1]   # gone: the oldest again


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_query_does_not_wait_for_a_whole_bulk_request(parallel: int) -> None:
    """A request that fits one pass, arriving behind a request of many passes, runs within the
    next couple of passes, not after all of the big one; the big one still gets every other
    pass, so a stream of queries cannot starve it."""
    async def scenario() -> tuple[list[list[list[int]]], int]:
        model = RecordingModel(delay=0.003)
        batcher = model.batcher(max_queue_texts=100, max_padded_tokens=4, max_batch_rows=1, parallel_passes=parallel)
        bulk = asyncio.ensure_future(batcher.submit(list("abcdefghijklmnop")))   # 16 passes of one row
        await asyncio.sleep(0.01)
        started = len(model.passes)
        queries = [asyncio.ensure_future(batcher.submit([q])) for q in "xyz"]
        await asyncio.gather(bulk, *queries)
        await batcher.aclose()
        return model.passes, started

    passes, started = asyncio.run(scenario())
    order = [chr(rows[0][0]) for rows in passes]
    assert sorted(order) == sorted("abcdefghijklmnopxyz")
    assert started < 12                                             # the queries came early
    for query in "xyz":                                            # each within its turn, one bulk pass apart
        assert order.index(query) <= started + 2 * "xyz".index(query) + parallel + 1, order
    assert order.index("z") < order.index("p")                      # ahead of the bulk's end
    at = [order.index(q) for q in "xyz"]
    assert all(b - a >= 2 for a, b in itertools.pairwise(at)), order   # a bulk pass between two queries


def test_a_one_text_request_longer_than_the_pass_budget_still_goes_ahead() -> None:
    """One text longer than the pass budget runs alone as one pass (`next_pass`), so it gets the
    query lane too: a long query must not wait for a whole bulk request either."""
    async def scenario() -> tuple[list[list[list[int]]], int]:
        model = RecordingModel(delay=0.003)
        batcher = model.batcher(max_queue_texts=100, max_padded_tokens=4, max_batch_rows=1, parallel_passes=1)
        bulk = asyncio.ensure_future(batcher.submit(list("abcdefghijklmnop")))   # 16 passes of one row
        await asyncio.sleep(0.01)
        started = len(model.passes)
        query = asyncio.ensure_future(batcher.submit(["q" * 12]))   # 12 tokens against a budget of 4
        await asyncio.gather(bulk, query)
        await batcher.aclose()
        return model.passes, started

    passes, started = asyncio.run(scenario())
    long_at = next(i for i, rows in enumerate(passes) if len(rows[0]) == 12)
    assert passes[long_at] == [tokens_of("q" * 12)]                  # alone, in one pass
    assert started < 12 and long_at <= started + 2, (started, long_at)


def test_a_request_right_after_the_last_answer_is_served() -> None:
    """A caller that submits again as soon as it is answered, with a tokenizer that never yields
    (rows counted already), lands while the finished worker's task is done but not yet reaped:
    the batcher must still start a worker for it."""
    async def scenario() -> list[list[float]]:
        model = RecordingModel(delay=0)

        async def tokenize(texts: list[str]) -> list[list[int]]:
            return [tokens_of(t) for t in texts]

        batcher = MicroBatcher(tokenize, model.run_pass, BatchingConfig(
            max_wait_ms=0, max_queue_texts=100, max_padded_tokens=64, max_batch_rows=8))
        answers = []
        for text in ("one", "two", "three", "four"):
            answers.append((await batcher.submit([text])).vectors[0].tolist())   # no wrapper task: no extra hop
        await batcher.aclose()
        return answers

    async def bounded() -> list[list[float]]:
        return await asyncio.wait_for(scenario(), timeout=5)

    assert asyncio.run(bounded()) == [fingerprint(tokens_of(t)) for t in ("one", "two", "three", "four")]


def test_a_pass_is_lone_only_when_nothing_else_of_the_batcher_runs_or_waits() -> None:
    """`run_pass` is told a pass is lone (the provider may then run it on the event loop's thread)
    only when no other pass of the batcher is running and no row is left waiting."""
    async def scenario() -> list[bool]:
        model = RecordingModel()
        model.release = asyncio.Event()
        batcher = model.batcher(max_batch_rows=1, max_padded_tokens=64)
        first = asyncio.ensure_future(batcher.submit(["a"]))
        await asyncio.sleep(0.01)                      # a's pass runs (held)
        rest = [asyncio.ensure_future(batcher.submit([text])) for text in "bc"]
        await asyncio.sleep(0.01)
        model.release.set()
        await asyncio.gather(first, *rest)
        await batcher.aclose()
        return model.lone

    assert asyncio.run(scenario()) == [True, False, True]   # b's pass leaves c waiting
