"""Retries of upstream provider calls: exponential backoff with full jitter, honouring Retry-After.

`backoff_delay` is the pure rule; `call_with_retries` the asyncio loop around it, with `sleep` and
`rng` injected. May import core.config and core.errors only. Only `ProviderTransientError`
(upstream 429/5xx/timeout/network) is retried; every other exception propagates at once.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tldw_Server_API.app.core.config import RetryConfig
from tldw_Server_API.app.core.errors import ProviderTransientError

T = TypeVar("T")
_JITTER = random.Random()   # shared: seeding one per call read os.urandom on every request
Sleep = Callable[[float], Awaitable[object]]
RetryHook = Callable[[int, ProviderTransientError, float], None]  # (retry number, error, delay)

_MAX_EXPONENT = 60  # 2**60 * any sane base is far past any cap; keeps the float finite


def _clean_retry_after(retry_after: float | None) -> float | None:
    if retry_after is None or math.isnan(retry_after):
        return None
    return max(0.0, retry_after)


def backoff_delay(
    attempt: int, config: RetryConfig, retry_after: float | None, rng: random.Random
) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry).

    Full jitter: uniform in [0, min(max_delay_s, base_delay_s * 2**(attempt-1))]. When the upstream
    sent Retry-After, the delay is at least that, still capped at `max_delay_s` (a longer wait is
    not worth holding a request for: `call_with_retries` then gives up at once instead, so the
    caller can fall back or pass the hint on). Always within [0, max_delay_s].
    """
    if attempt < 1:
        raise ValueError("attempt counts retries from 1")
    cap = max(0.0, config.max_delay_s)
    ceiling = min(cap, max(0.0, config.base_delay_s) * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    delay = rng.uniform(0.0, ceiling)
    hint = _clean_retry_after(retry_after)
    if hint is not None:
        delay = max(delay, hint)
    return min(delay, cap)


def step_retry_delay(failures: int, error: BaseException, base_delay_s: float, max_delay_s: float) -> float:
    """Seconds before a pipeline step that has failed `failures` times runs again: the same rule
    as `backoff_delay`, honouring the error's own `retry_after` hint when it has one."""
    hint = getattr(error, "retry_after", None)
    retry_after = float(hint) if isinstance(hint, int | float) and not isinstance(hint, bool) else None
    return backoff_delay(failures, RetryConfig(0, base_delay_s, max_delay_s), retry_after, _JITTER)


def retry_after_too_long(retry_after: float | None, config: RetryConfig) -> bool:
    """True when the upstream asks for a longer wait than we ever sleep: retrying sooner is futile."""
    hint = _clean_retry_after(retry_after)
    return hint is not None and hint > config.max_delay_s


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    config: RetryConfig,
    *,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    on_retry: RetryHook | None = None,
) -> T:
    """Await `fn()`; on `ProviderTransientError` wait `backoff_delay` and try again, up to
    `config.max_retries` retries, then re-raise the last error. It also re-raises at once when the
    error's `retry_after` exceeds `max_delay_s`. Other exceptions (caller errors, `CircuitOpenError`,
    cancellation) propagate immediately. `on_retry(n, error, delay)` runs before each wait.

    With a circuit breaker, wrap `breaker.call` inside this so an opening circuit stops the retries.
    """
    rng = rng if rng is not None else _JITTER
    retries = 0
    while True:
        try:
            return await fn()
        except ProviderTransientError as error:
            retries += 1
            if retries > config.max_retries or retry_after_too_long(error.retry_after, config):
                raise
            delay = backoff_delay(retries, config, error.retry_after, rng)
            if on_retry is not None:
                on_retry(retries, error, delay)
            await sleep(delay)
