"""One periodic loop for the server's background work (the re-embed consumer, the vector
compactor, the expired-files sweep): a step now and every interval until a stop event is set; a
step that fails is logged and the loop goes on. Pure asyncio and loguru: no FastAPI, no settings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from loguru import logger

from tldw_Server_API.app.core.errors import InvalidInput


async def run_periodically(step: Callable[[], Awaitable[object]], interval_seconds: float, stop: asyncio.Event,
                           *, name: str) -> None:
    """Await `step()` now and every `interval_seconds` until `stop` is set (also while waiting);
    an exception from a step is logged as a warning under `name` and the next step retries."""
    if not interval_seconds > 0:
        raise InvalidInput(f"the interval of {name} must be positive", param="interval_seconds")
    while not stop.is_set():
        try:
            await step()
        except Exception as exc:  # noqa: BLE001 - a failing step must not end the loop: the next one retries
            logger.warning("background {}: {}", name, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_seconds)
