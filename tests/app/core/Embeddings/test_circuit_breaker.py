"""Circuit breaker: transitions on an injected clock, half-open probe limit, stale verdicts,
`call()` counting only provider faults, reset, the state-change hook, the registry, and a
hypothesis state machine checking the breaker against a reference model of its spec."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tldw_Server_API.app.core.config import BreakerConfig
from tldw_Server_API.app.core.Embeddings.circuit_breaker import BreakerRegistry, CircuitBreaker
from tldw_Server_API.app.core.errors import (
    CircuitOpenError,
    InvalidInput,
    NotFound,
    ProviderError,
    ProviderTransientError,
    UpstreamRejectedRequest,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(threshold: int = 3, timeout: float = 10.0, probes: int = 1) -> tuple[CircuitBreaker, FakeClock, list]:
    clock = FakeClock()
    changes: list[tuple[str, str, str]] = []
    breaker = CircuitBreaker(
        "openai", BreakerConfig(threshold, timeout, probes), clock,
        on_state_change=lambda *change: changes.append(change),
    )
    return breaker, clock, changes


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.record_failure(breaker.before_call())


def test_opens_after_threshold_consecutive_failures_only() -> None:
    breaker, _, changes = make(threshold=3)
    fail(breaker, 2)
    breaker.record_success(breaker.before_call())  # breaks the run of failures
    fail(breaker, 2)
    assert breaker.state == "closed"
    fail(breaker, 1)
    assert breaker.state == "open"
    assert changes == [("openai", "closed", "open")]


def test_open_rejects_with_time_left_then_turns_half_open() -> None:
    breaker, clock, changes = make(threshold=1, timeout=10.0)
    fail(breaker, 1)
    clock.advance(4.0)
    with pytest.raises(CircuitOpenError) as info:
        breaker.before_call()
    assert info.value.retry_after == pytest.approx(6.0)
    assert breaker.snapshot()["retry_after"] == pytest.approx(6.0)
    clock.advance(6.0)
    assert breaker.state == "half_open"
    assert changes[-1] == ("openai", "open", "half_open")


def test_half_open_admits_at_most_the_probe_count_and_closes_after_that_many_successes() -> None:
    breaker, clock, changes = make(threshold=1, timeout=5.0, probes=2)
    fail(breaker, 1)
    clock.advance(5.0)
    first, second = breaker.before_call(), breaker.before_call()
    with pytest.raises(CircuitOpenError) as info:
        breaker.before_call()
    assert 0 < (info.value.retry_after or 0) <= 5.0
    breaker.record_success(first)
    assert breaker.state == "half_open"
    with pytest.raises(CircuitOpenError):  # one success banked + one in flight = both slots used
        breaker.before_call()
    breaker.record_success(second)
    assert breaker.state == "closed"
    assert [c[1:] for c in changes] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_a_failed_probe_reopens_with_a_fresh_timeout() -> None:
    breaker, clock, _ = make(threshold=1, timeout=5.0)
    fail(breaker, 1)
    clock.advance(5.0)
    breaker.record_failure(breaker.before_call())
    assert breaker.state == "open"
    assert breaker.retry_after() == pytest.approx(5.0)


def test_a_verdict_from_before_the_last_transition_is_ignored() -> None:
    breaker, clock, _ = make(threshold=1, timeout=5.0)
    slow = breaker.before_call()        # admitted while closed
    fail(breaker, 1)                    # opens
    clock.advance(5.0)
    assert breaker.state == "half_open"
    breaker.record_success(slow)        # stale: must not close the half-open breaker
    assert breaker.state == "half_open"
    probe = breaker.before_call()
    breaker.record_success(probe)
    assert breaker.state == "closed"


def test_release_frees_a_probe_slot() -> None:
    breaker, clock, _ = make(threshold=1, timeout=1.0)
    fail(breaker, 1)
    clock.advance(1.0)
    ticket = breaker.before_call()
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    breaker.release(ticket)
    breaker.before_call()


def test_call_counts_only_provider_faults() -> None:
    breaker, _, _ = make(threshold=2)

    async def raise_(error: Exception) -> None:
        raise error

    async def scenario() -> None:
        for _ in range(5):
            with pytest.raises(InvalidInput):
                await breaker.call(lambda: raise_(InvalidInput("bad")))
        for _ in range(5):   # the upstream refusing one request is that request's fault
            with pytest.raises(UpstreamRejectedRequest):
                await breaker.call(lambda: raise_(UpstreamRejectedRequest("HTTP 400")))
        assert breaker.state == "closed" and breaker.snapshot()["failures"] == 0
        with pytest.raises(ProviderError):
            await breaker.call(lambda: raise_(ProviderError("boom")))
        with pytest.raises(ProviderTransientError):
            await breaker.call(lambda: raise_(ProviderTransientError("503")))
        assert breaker.state == "open"

        async def ok() -> str:
            return "vectors"

        with pytest.raises(CircuitOpenError):
            await breaker.call(ok)

    asyncio.run(scenario())


def test_call_releases_the_probe_on_a_caller_error_and_closes_on_success() -> None:
    breaker, clock, _ = make(threshold=1, timeout=1.0)
    fail(breaker, 1)
    clock.advance(1.0)

    async def invalid() -> None:
        raise InvalidInput("bad")

    async def ok() -> int:
        return 7

    async def scenario() -> None:
        with pytest.raises(InvalidInput):
            await breaker.call(invalid)
        assert breaker.state == "half_open"
        assert await breaker.call(ok) == 7  # the probe slot was given back
        assert breaker.state == "closed"

    asyncio.run(scenario())


def test_reset_closes_and_fires_the_hook_and_snapshot_reports_totals() -> None:
    breaker, _, changes = make(threshold=2)
    fail(breaker, 2)
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    snap = breaker.snapshot()
    assert snap["state"] == "open" and snap["opened_at"] == 1000.0 and snap["failures"] == 2
    assert snap["totals"] == {"admitted": 2, "successes": 0, "failures": 2, "rejected": 1, "opened": 1}
    breaker.reset()
    assert breaker.state == "closed" and breaker.snapshot()["failures"] == 0
    assert changes[-1] == ("openai", "open", "closed")
    breaker.before_call()


def test_a_failing_hook_does_not_break_the_breaker() -> None:
    def broken(*_: str) -> None:
        raise RuntimeError("gauge exploded")

    breaker = CircuitBreaker("x", BreakerConfig(1, 1.0, 1), FakeClock(), on_state_change=broken)
    fail(breaker, 1)
    assert breaker.state == "open"


def test_registry_creates_per_provider_breakers_and_reports_through_its_hook() -> None:
    clock = FakeClock()
    registry = BreakerRegistry(BreakerConfig(1, 10.0, 1), clock)
    changes: list[tuple[str, str, str]] = []
    registry.on_state_change = lambda *c: changes.append(c)  # set after construction: still used
    assert registry.get("openai") is registry.get("openai")
    fail(registry.get("openai"), 1)
    registry.get("onnx").before_call()
    snap = registry.snapshot()
    assert list(snap) == ["onnx", "openai"]
    assert snap["openai"]["state"] == "open" and snap["onnx"]["state"] == "closed"
    assert changes == [("openai", "closed", "open")]
    assert registry.reset("openai")["state"] == "closed"
    assert changes[-1] == ("openai", "open", "closed")
    with pytest.raises(NotFound):
        registry.reset("never-used")


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", BreakerConfig(0, 1.0, 1))


class BreakerMachine(RuleBasedStateMachine):
    """Random admissions, verdicts (current and stale), releases, time steps and resets, checked
    against a reference model written from the spec."""

    THRESHOLD, TIMEOUT, PROBES = 3, 10.0, 2

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.edges: list[tuple[str, str]] = []
        self.breaker = CircuitBreaker(
            "p", BreakerConfig(self.THRESHOLD, self.TIMEOUT, self.PROBES), self.clock,
            on_state_change=lambda _n, old, new: self.edges.append((old, new)),
        )
        self.tickets: list[int] = []
        # the model
        self.state, self.failures, self.opened_at, self.generation = "closed", 0, 0.0, 0
        self.probes, self.successes = 0, 0

    def go(self, new: str) -> None:
        if new != self.state:
            self.state, self.generation, self.probes, self.successes = new, self.generation + 1, 0, 0
            if new == "open":
                self.opened_at = self.clock.now
            if new == "closed":
                self.failures = 0

    def tick(self) -> None:
        if self.state == "open" and self.clock.now >= self.opened_at + self.TIMEOUT:
            self.go("half_open")

    @rule()
    def admit(self) -> None:
        self.tick()
        expect_admit = self.state == "closed" or (
            self.state == "half_open" and self.probes + self.successes < self.PROBES
        )
        try:
            ticket = self.breaker.before_call()
        except CircuitOpenError as error:
            assert not expect_admit
            assert 0 <= (error.retry_after or 0) <= self.TIMEOUT
            return
        assert expect_admit
        assert ticket == self.generation
        self.probes += self.state == "half_open"
        self.tickets.append(ticket)

    @precondition(lambda self: self.tickets)
    @rule(data=st.data(), verdict=st.sampled_from(["success", "failure", "release"]))
    def finish(self, data: st.DataObject, verdict: str) -> None:
        ticket = self.tickets.pop(data.draw(st.integers(0, len(self.tickets) - 1)))
        getattr(self.breaker, {"success": "record_success", "failure": "record_failure"}.get(verdict, verdict))(ticket)
        self.tick()
        if ticket != self.generation:
            return
        if verdict == "release":
            self.probes -= self.state == "half_open"
        elif self.state == "closed":
            self.failures = 0 if verdict == "success" else self.failures + 1
            if self.failures >= self.THRESHOLD:
                self.go("open")
        elif self.state == "half_open":
            if verdict == "failure":
                self.go("open")
            else:
                self.probes, self.successes = self.probes - 1, self.successes + 1
                if self.successes >= self.PROBES:
                    self.go("closed")

    @rule(seconds=st.sampled_from([0.5, 3.0, 9.99, 10.0, 25.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.tick()
        self.go("closed")
        self.failures = 0

    @invariant()
    def matches_model(self) -> None:
        self.tick()
        assert self.breaker.state == self.state
        snap = self.breaker.snapshot()
        if self.state == "closed":
            assert snap["failures"] == self.failures < self.THRESHOLD
        if self.state == "half_open":
            assert snap["half_open_probes_in_flight"] == self.probes <= self.PROBES
        allowed = {("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("half_open", "closed"),
                   ("open", "closed")}  # the last only through reset
        assert set(self.edges) <= allowed


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_breaker_matches_its_reference_model = BreakerMachine.TestCase
