"""`run_periodically`, the one loop behind the server's background work: it steps at once and then
every interval, a failing step is logged and the loop goes on, and the stop event ends it even in
the middle of a long wait."""

from __future__ import annotations

import asyncio
import time

import pytest
from loguru import logger

from tldw_Server_API.app.core.errors import InvalidInput
from tldw_Server_API.app.core.periodic import run_periodically


def test_steps_now_and_again_and_outlives_a_failing_step() -> None:
    warnings: list[str] = []
    steps: list[float] = []

    async def main() -> None:
        stop = asyncio.Event()

        async def step() -> None:
            steps.append(time.monotonic())
            if len(steps) == 2:
                raise RuntimeError("the store is away")
            if len(steps) == 4:
                stop.set()

        await asyncio.wait_for(run_periodically(step, 0.01, stop, name="probe loop"), timeout=30)

    sink = logger.add(lambda message: warnings.append(str(message)), level="WARNING", format="{message}")
    try:
        asyncio.run(main())
    finally:
        logger.remove(sink)
    assert len(steps) == 4                       # the failure did not end the loop
    assert [w for w in warnings if "probe loop" in w] == ["background probe loop: the store is away\n"]
    assert all(later - earlier >= 0.005 for earlier, later in zip(steps, steps[1:], strict=False))


def test_stop_ends_a_long_wait_at_once() -> None:
    async def main() -> float:
        stop = asyncio.Event()
        calls = 0

        async def step() -> None:
            nonlocal calls
            calls += 1

        task = asyncio.create_task(run_periodically(step, 3600, stop, name="hourly"))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        assert calls == 1                        # the first step ran at once, not after the interval
        return time.monotonic() - started

    assert asyncio.run(main()) < 5


@pytest.mark.parametrize("interval", [0, -1.0])
def test_refuses_a_non_positive_interval(interval: float) -> None:
    async def step() -> None:
        raise AssertionError("never stepped")

    with pytest.raises(InvalidInput):
        asyncio.run(run_periodically(step, interval, asyncio.Event(), name="bad"))
