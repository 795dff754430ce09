"""Per-provider circuit breakers: closed -> open -> half_open -> closed, on an injected clock.

Pure state machine (no I/O, no threads): use it from one event loop. May import core.config and
core.errors only (plus loguru for a failing state-change hook). Must not know about HTTP, metrics
or providers: Prometheus gauges hang off `on_state_change`, set by whoever builds the registry.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Any, TypeVar

from loguru import logger

from tldw_Server_API.app.core.config import BreakerConfig
from tldw_Server_API.app.core.errors import CircuitOpenError, NotFound, ProviderError, UpstreamRejectedRequest

T = TypeVar("T")
Clock = Callable[[], float]
StateChangeHook = Callable[[str, str, str], None]  # (breaker name, old state, new state)

# A half-open breaker whose probe slots are all taken asks callers to come back this soon (at most):
# the probes' verdict is usually a single upstream round trip away.
HALF_OPEN_BUSY_RETRY_S = 1.0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """One provider's breaker.

    `before_call()` admits a call or raises `CircuitOpenError`; it returns a ticket (the breaker's
    generation) that `record_success` / `record_failure` / `release` take back, so a verdict from a
    call admitted before the last transition cannot decide the new state (a slow call started while
    closed must not close a half-open breaker). Passing no ticket applies the verdict as current.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        clock: Clock = time.monotonic,
        on_state_change: StateChangeHook | None = None,
    ) -> None:
        if config.failure_threshold < 1 or config.half_open_probes < 1 or config.recovery_timeout_s < 0:
            raise ValueError("failure_threshold and half_open_probes must be >= 1, recovery_timeout_s >= 0")
        self.name = name
        self.config = config
        self._clock = clock
        self._on_state_change = on_state_change
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._failures = 0                 # consecutive failures while closed
        self._opened_at: float | None = None
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._totals = {"admitted": 0, "successes": 0, "failures": 0, "rejected": 0, "opened": 0}

    # --- state ---------------------------------------------------------------------------------
    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose recovery timeout has passed turns half-open here."""
        if self._state is BreakerState.OPEN and self.retry_after() <= 0:
            self._transition(BreakerState.HALF_OPEN)
        return self._state

    def retry_after(self) -> float:
        """Seconds until an open breaker turns half-open (0 when not open)."""
        if self._state is not BreakerState.OPEN or self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.config.recovery_timeout_s - self._clock())

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        self._generation += 1
        self._probes_in_flight = 0
        self._probe_successes = 0
        if new is BreakerState.OPEN:
            self._opened_at = self._clock()
            self._totals["opened"] += 1
        elif new is BreakerState.CLOSED:
            self._opened_at = None
            self._failures = 0
        if self._on_state_change is not None:
            try:
                self._on_state_change(self.name, old.value, new.value)
            except Exception as exc:  # a broken metrics hook must not break the breaker
                logger.warning("circuit breaker state hook failed for {}: {}", self.name, type(exc).__name__)

    # --- admission and verdicts ------------------------------------------------------------------
    def before_call(self) -> int:
        """Admit a call (returns its ticket) or raise `CircuitOpenError` with `retry_after`."""
        state = self.state
        if state is BreakerState.OPEN:
            self._totals["rejected"] += 1
            raise CircuitOpenError(
                f"circuit breaker for provider '{self.name}' is open", retry_after=self.retry_after()
            )
        if state is BreakerState.HALF_OPEN:
            if self._probes_in_flight + self._probe_successes >= self.config.half_open_probes:
                self._totals["rejected"] += 1
                raise CircuitOpenError(
                    f"circuit breaker for provider '{self.name}' is half-open and its probes are in flight",
                    retry_after=min(HALF_OPEN_BUSY_RETRY_S, self.config.recovery_timeout_s),
                )
            self._probes_in_flight += 1
        self._totals["admitted"] += 1
        return self._generation

    def _is_current(self, ticket: int | None) -> bool:
        return ticket is None or ticket == self._generation

    def record_success(self, ticket: int | None = None) -> None:
        self._totals["successes"] += 1
        if not self._is_current(ticket):
            return
        if self._state is BreakerState.CLOSED:
            self._failures = 0
        elif self._state is BreakerState.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)
            self._probe_successes += 1
            if self._probe_successes >= self.config.half_open_probes:
                self._transition(BreakerState.CLOSED)

    def record_failure(self, ticket: int | None = None) -> None:
        self._totals["failures"] += 1
        if not self._is_current(ticket):
            return
        if self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self.config.failure_threshold:
                self._transition(BreakerState.OPEN)
        elif self._state is BreakerState.HALF_OPEN:
            self._transition(BreakerState.OPEN)

    def release(self, ticket: int | None = None) -> None:
        """The admitted call ended without a verdict (caller error, cancellation): free its probe slot."""
        if self._is_current(ticket) and self._state is BreakerState.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def reset(self) -> None:
        """Close the breaker and forget consecutive failures (admin action); totals are kept."""
        self._transition(BreakerState.CLOSED)
        self._failures = 0

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn()` through the breaker. Only provider faults (`ProviderError`, which includes
        `ProviderTransientError`) count as failures; an upstream refusing one request
        (`UpstreamRejectedRequest`: one caller's bad input must not cut everybody off) and any
        other exception (`InvalidInput`, a nested `CircuitOpenError`, cancellation) leave the
        breaker as it was."""
        ticket = self.before_call()
        try:
            result = await fn()
        except UpstreamRejectedRequest:
            self.release(ticket)
            raise
        except ProviderError:
            self.record_failure(ticket)
            raise
        except BaseException:
            self.release(ticket)
            raise
        self.record_success(ticket)
        return result

    def snapshot(self) -> dict[str, Any]:
        """State for health and admin routes. `opened_at` is on the breaker's (monotonic) clock."""
        state = self.state
        return {
            "name": self.name,
            "state": state.value,
            "failures": self._failures,
            "failure_threshold": self.config.failure_threshold,
            "opened_at": self._opened_at,
            "retry_after": self.retry_after(),
            "half_open_probes_in_flight": self._probes_in_flight if state is BreakerState.HALF_OPEN else 0,
            "totals": dict(self._totals),
        }


class BreakerRegistry:
    """One breaker per provider name, created on first `get`. `on_state_change` may be set (or
    replaced) at any time; every breaker reports through it."""

    def __init__(
        self, config: BreakerConfig, clock: Clock = time.monotonic, on_state_change: StateChangeHook | None = None
    ) -> None:
        self.config = config
        self._clock = clock
        self.on_state_change = on_state_change
        self._breakers: dict[str, CircuitBreaker] = {}

    def _dispatch(self, name: str, old: str, new: str) -> None:
        if self.on_state_change is not None:
            self.on_state_change(name, old, new)

    def get(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(name, self.config, self._clock, on_state_change=self._dispatch)
            self._breakers[name] = breaker
        return breaker

    def names(self) -> list[str]:
        return sorted(self._breakers)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: self._breakers[name].snapshot() for name in self.names()}

    def reset(self, name: str) -> dict[str, Any]:
        """Reset one breaker; returns its new snapshot. Raises `NotFound` (404) for a provider that
        has no breaker yet (never called); `get(name).reset()` resets unconditionally."""
        breaker = self._breakers.get(name)
        if breaker is None:
            raise NotFound(f"no circuit breaker for provider '{name}'", param="provider")
        breaker.reset()
        return breaker.snapshot()
