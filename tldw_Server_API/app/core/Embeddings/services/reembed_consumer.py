"""The re-embed consumer: starts scheduled jobs when their time comes. Scheduled re-embeds are
written to the jobs DB as `queued` jobs with a `not_before` time (the durable request log: it
survives a restart of the server and a flush of Redis, and executors never start them early);
every `poll_seconds` the consumer releases the due ones (one compare-and-set each, so of several
server processes exactly one starts a job) and hands them to the executor, embedded or Redis.
"""

from __future__ import annotations

import asyncio

from loguru import logger

from tldw_Server_API.app.core.Embeddings.job_manager import MediaEmbeddingJobManager
from tldw_Server_API.app.core.periodic import run_periodically


class ReembedConsumer:
    def __init__(self, manager: MediaEmbeddingJobManager) -> None:
        self._manager = manager

    async def step(self) -> int:
        """Start every due scheduled job; how many were started."""
        return await self._manager.release_due()

    async def _step_logged(self) -> None:
        started = await self.step()
        if started:
            logger.info("re-embed: started {} scheduled job(s)", started)

    async def run_forever(self, poll_seconds: float, stop: asyncio.Event) -> None:
        """`step` every `poll_seconds` until `stop`; a failed poll (the jobs DB away for a moment) is
        logged and the next one retries."""
        await run_periodically(self._step_logged, poll_seconds, stop, name="re-embed consumer")
