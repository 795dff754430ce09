"""The re-embed consumer: starts scheduled jobs when their time comes. Scheduled re-embeds are
written to the jobs DB as `queued` jobs with a `not_before` time (the durable request log: it
survives a restart of the server and a flush of Redis, and executors never start them early);
every `poll_seconds` the consumer releases the due ones (one compare-and-set each, so of several
server processes exactly one starts a job) and hands them to the executor, embedded or Redis.
"""

from __future__ import annotations

import asyncio
import contextlib

from loguru import logger

from tldw_Server_API.app.core.Embeddings.job_manager import MediaEmbeddingJobManager


class ReembedConsumer:
    def __init__(self, manager: MediaEmbeddingJobManager) -> None:
        self._manager = manager

    async def step(self) -> int:
        """Start every due scheduled job; how many were started."""
        return await self._manager.release_due()

    async def run_forever(self, poll_seconds: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                started = await self.step()
                if started:
                    logger.info("re-embed: started {} scheduled job(s)", started)
            except Exception as exc:  # noqa: BLE001 - the jobs DB away for a moment: the next poll retries
                logger.warning("re-embed consumer: {}", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll_seconds)
