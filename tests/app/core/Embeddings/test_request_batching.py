"""The micro-batcher: planning rule (property-tested), every text back exactly once to its own
request in order under random concurrency, merging, bounded queue -> Overloaded, errors."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tldw_Server_API.app.core.config import BatchingConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import EmbeddingBatch
from tldw_Server_API.app.core.Embeddings.request_batching import MicroBatcher, estimate_tokens, take_count
from tldw_Server_API.app.core.errors import Overloaded


@given(st.lists(st.integers(min_value=1, max_value=500), max_size=40), st.integers(min_value=1, max_value=2000))
def test_take_count_is_the_longest_prefix_within_budget(sizes: list[int], budget: int) -> None:
    count = take_count(sizes, budget)
    if not sizes:
        assert count == 0
        return
    assert count >= 1
    assert count == 1 or sum(sizes[:count]) <= budget
    if count < len(sizes):
        assert sum(sizes[:count + 1]) > budget


def fingerprint(text: str) -> list[float]:
    return [float(len(text)), float(sum(map(ord, text)) % 9973), float(text.count("x"))]


class RecordingModel:
    """A stand-in model at the batcher's injection point: deterministic rows per text."""

    def __init__(self, fail_on: str | None = None, delay: float = 0.001) -> None:
        self.calls: list[list[str]] = []
        self.fail_on = fail_on
        self.delay = delay

    async def __call__(self, texts: list[str]) -> EmbeddingBatch:
        self.calls.append(texts)
        await asyncio.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("model failure")
        return EmbeddingBatch(np.array([fingerprint(t) for t in texts], dtype=np.float32), [len(t) for t in texts])


def config(**overrides: float) -> BatchingConfig:
    values = {"max_batch_tokens": 64, "max_wait_ms": 1.0, "quiet_ms": 1.0, "max_queue_texts": 10_000,
              "max_padded_tokens": 4096, "max_batch_rows": 256}
    values.update(overrides)
    return BatchingConfig(**values)  # type: ignore[arg-type]


requests_strategy = st.lists(
    st.lists(st.text(alphabet="abcx ", min_size=1, max_size=40), min_size=1, max_size=8), min_size=1, max_size=30
)


@settings(max_examples=40, deadline=None)
@given(requests_strategy, st.integers(min_value=8, max_value=200), st.randoms(use_true_random=False))
def test_every_text_comes_back_once_to_its_request_in_order(
    requests: list[list[str]], budget: int, rnd: random.Random
) -> None:
    async def scenario() -> None:
        model = RecordingModel()
        batcher = MicroBatcher(model, config(max_batch_tokens=budget))

        async def client(texts: list[str]) -> EmbeddingBatch:
            await asyncio.sleep(rnd.random() / 1000)
            return await batcher.submit(texts)

        results = await asyncio.gather(*(client(texts) for texts in requests))
        for texts, result in zip(requests, results, strict=True):
            assert result.vectors.tolist() == [fingerprint(t) for t in texts]
            assert result.token_counts == [len(t) for t in texts]
        sent = sorted(t for call in model.calls for t in call)
        assert sent == sorted(t for texts in requests for t in texts)  # each text embedded exactly once
        for call in model.calls:  # budget respected unless one request alone exceeds it
            assert sum(map(estimate_tokens, call)) <= budget or any(
                call == texts for texts in requests
            )
        await batcher.aclose()

    asyncio.run(scenario())


def test_concurrent_requests_are_merged_into_fewer_model_calls() -> None:
    async def scenario() -> tuple[int, int]:
        model = RecordingModel(delay=0.01)
        batcher = MicroBatcher(model, config(max_batch_tokens=10_000))
        await asyncio.gather(*(batcher.submit([f"text {i}"]) for i in range(20)))
        await batcher.aclose()
        return len(model.calls), max(len(c) for c in model.calls)

    calls, biggest = asyncio.run(scenario())
    assert calls < 20 and biggest > 1


def test_a_full_queue_answers_overloaded_at_once() -> None:
    async def scenario() -> list[object]:
        batcher = MicroBatcher(RecordingModel(delay=0.05), config(max_queue_texts=10))
        outcomes = await asyncio.gather(*(batcher.submit(["a", "b", "c"]) for _ in range(8)), return_exceptions=True)
        after = await batcher.submit(["still works"])
        assert after.vectors.shape == (1, 3)
        await batcher.aclose()
        return outcomes

    outcomes = asyncio.run(scenario())
    overloaded = [o for o in outcomes if isinstance(o, Overloaded)]
    served = [o for o in outcomes if isinstance(o, EmbeddingBatch)]
    assert overloaded and served and len(overloaded) + len(served) == 8
    assert all(o.retry_after == 1 for o in overloaded)


def test_a_failing_batch_fails_its_callers_and_the_batcher_lives_on() -> None:
    async def scenario() -> None:
        batcher = MicroBatcher(RecordingModel(fail_on="boom"), config(max_wait_ms=5))
        results = await asyncio.gather(batcher.submit(["boom"]), batcher.submit(["fine"]), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)  # merged into the failing batch
        ok = await batcher.submit(["fine again"])
        assert ok.vectors.tolist() == [fingerprint("fine again")]
        await batcher.aclose()

    asyncio.run(scenario())


def test_token_counts_drive_the_budget() -> None:
    async def scenario() -> list[list[str]]:
        model = RecordingModel(delay=0.01)
        batcher = MicroBatcher(model, config(max_batch_tokens=100, max_wait_ms=5))
        await asyncio.gather(*(batcher.submit([f"t{i}"], token_counts=[60]) for i in range(4)))
        await batcher.aclose()
        return model.calls

    assert all(len(call) == 1 for call in asyncio.run(scenario()))  # 60 + 60 > 100: never merged


@pytest.mark.parametrize("text", ["", "abcd", "x" * 400])
def test_estimate_tokens_is_positive(text: str) -> None:
    assert estimate_tokens(text) >= 2


@given(st.lists(st.integers(min_value=1, max_value=600), max_size=80).map(lambda xs: sorted(xs, reverse=True)),
       st.integers(min_value=16, max_value=10_000), st.integers(min_value=1, max_value=300))
def test_padded_batches_cover_every_text_once_within_budget(lengths: list[int], budget: int, max_rows: int) -> None:
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_provider import plan_padded_batches

    batches = plan_padded_batches(lengths, budget, max_rows)
    assert [i for span in batches for i in span] == list(range(len(lengths)))
    for span in batches:
        assert 1 <= len(span) <= max_rows
        assert len(span) == 1 or len(span) * lengths[span.start] <= budget
