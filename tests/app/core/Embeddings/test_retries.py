"""Retries: backoff bounds (property), exponential growth, Retry-After honoured or given up on,
only transient provider errors retried, giving up after max_retries, and stopping at an open
circuit. `sleep` is a recording fake, so nothing waits."""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tldw_Server_API.app.core.config import BreakerConfig, RetryConfig
from tldw_Server_API.app.core.Embeddings.circuit_breaker import CircuitBreaker
from tldw_Server_API.app.core.Embeddings.retries import backoff_delay, call_with_retries
from tldw_Server_API.app.core.errors import (
    CircuitOpenError,
    InvalidInput,
    ProviderError,
    ProviderTransientError,
)


class Flaky:
    """Raises the given errors in turn, then returns "ok"; counts calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@given(
    attempt=st.integers(1, 80),
    base=st.floats(0, 5),
    cap=st.floats(0, 60),
    retry_after=st.none() | st.floats(0, 100),
    seed=st.integers(0, 2**32),
)
def test_backoff_stays_within_its_bounds(
    attempt: int, base: float, cap: float, retry_after: float | None, seed: int
) -> None:
    config = RetryConfig(max_retries=5, base_delay_s=base, max_delay_s=cap)
    delay = backoff_delay(attempt, config, retry_after, random.Random(seed))
    assert 0 <= delay <= cap
    if retry_after is None:
        assert delay <= base * 2 ** (attempt - 1) + 1e-9
    else:
        assert delay >= min(retry_after, cap)


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    config = RetryConfig(max_retries=10, base_delay_s=0.5, max_delay_s=1000)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0)]:
        samples = [backoff_delay(attempt, config, None, rng) for _ in range(300)]
        assert max(samples) <= ceiling
        assert max(samples) > 0.9 * ceiling and min(samples) < 0.1 * ceiling  # jitter spans [0, ceiling]
    capped = RetryConfig(max_retries=10, base_delay_s=0.5, max_delay_s=3.0)
    assert max(backoff_delay(20, capped, None, rng) for _ in range(300)) <= 3.0
    with pytest.raises(ValueError):
        backoff_delay(0, config, None, rng)


def test_transient_errors_are_retried_until_success() -> None:
    fn = Flaky(ProviderTransientError("503"), ProviderTransientError("timeout"))
    sleep, seen = RecordingSleep(), []
    config = RetryConfig(max_retries=3, base_delay_s=1.0, max_delay_s=30)
    result = asyncio.run(call_with_retries(
        fn, config, sleep=sleep, rng=random.Random(1), on_retry=lambda n, err, d: seen.append((n, str(err), d)),
    ))
    assert result == "ok" and fn.calls == 3
    assert len(sleep.delays) == 2 and 0 <= sleep.delays[0] <= 1.0 and 0 <= sleep.delays[1] <= 2.0
    assert [(n, e) for n, e, _ in seen] == [(1, "503"), (2, "timeout")]
    assert [d for *_, d in seen] == sleep.delays


def test_retry_after_is_honoured() -> None:
    fn = Flaky(ProviderTransientError("429", retry_after=7.5))
    sleep = RecordingSleep()
    config = RetryConfig(max_retries=3, base_delay_s=0.1, max_delay_s=20)
    assert asyncio.run(call_with_retries(fn, config, sleep=sleep, rng=random.Random(0))) == "ok"
    assert sleep.delays == [7.5]


def test_a_retry_after_longer_than_the_cap_gives_up_at_once() -> None:
    error = ProviderTransientError("429", retry_after=120)
    fn, sleep = Flaky(error), RecordingSleep()
    config = RetryConfig(max_retries=3, base_delay_s=0.1, max_delay_s=20)
    with pytest.raises(ProviderTransientError) as info:
        asyncio.run(call_with_retries(fn, config, sleep=sleep))
    assert info.value is error and info.value.retry_after == 120
    assert fn.calls == 1 and sleep.delays == []


@pytest.mark.parametrize("error", [InvalidInput("bad"), ProviderError("bad vectors"), CircuitOpenError("open"),
                                   RuntimeError("bug")])
def test_other_errors_are_not_retried(error: Exception) -> None:
    fn, sleep = Flaky(error), RecordingSleep()
    with pytest.raises(type(error)):
        asyncio.run(call_with_retries(fn, RetryConfig(3, 0.1, 1.0), sleep=sleep))
    assert fn.calls == 1 and sleep.delays == []


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_gives_up_after_max_retries_with_the_last_error(max_retries: int) -> None:
    errors = [ProviderTransientError(f"fail {i}") for i in range(max_retries + 1)]
    fn, sleep = Flaky(*errors), RecordingSleep()
    with pytest.raises(ProviderTransientError) as info:
        asyncio.run(call_with_retries(fn, RetryConfig(max_retries, 0.01, 1.0), sleep=sleep))
    assert info.value is errors[-1]
    assert fn.calls == max_retries + 1 and len(sleep.delays) == max_retries


def test_retries_stop_when_the_circuit_opens() -> None:
    breaker = CircuitBreaker("openai", BreakerConfig(failure_threshold=2, recovery_timeout_s=30, half_open_probes=1),
                             clock=lambda: 0.0)
    fn, sleep = Flaky(*[ProviderTransientError("503") for _ in range(10)]), RecordingSleep()
    with pytest.raises(CircuitOpenError):
        asyncio.run(call_with_retries(lambda: breaker.call(fn), RetryConfig(5, 0.01, 1.0), sleep=sleep))
    assert fn.calls == 2 and len(sleep.delays) == 2
