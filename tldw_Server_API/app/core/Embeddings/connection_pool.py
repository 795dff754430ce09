"""Pooled HTTP sessions for the remote embedding providers: one `aiohttp.ClientSession` per base URL,
with a bounded connector (`pool_size` connections) and a whole-request timeout.

Sessions are created lazily, on first use inside the running event loop (never at import or
construction time), and closed by `aclose()`. May import aiohttp only; holds no provider policy.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp


@dataclass
class _PooledSession:
    session: aiohttp.ClientSession
    loop: asyncio.AbstractEventLoop


class HTTPSessionPool:
    """Base URL -> one shared `ClientSession` bound to the loop it was created in.

    A session belongs to one event loop; when it is asked for from another loop (tests that run
    several `asyncio.run` calls, a restarted lifespan) a fresh session replaces it."""

    def __init__(self, *, pool_size: int, timeout_s: float) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._pool_size = pool_size
        self._timeout_s = timeout_s
        self._sessions: dict[str, _PooledSession] = {}
        self.sessions_created = 0  # observable: proves reuse in tests and health output

    @property
    def pool_size(self) -> int:
        return self._pool_size

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    async def session(self, base_url: str) -> aiohttp.ClientSession:
        """The shared session of `base_url`, created on first use in the running loop.

        Besides the stale-loop path (which re-checks after its await) there is no await between
        the lookup and the insert, so concurrent callers on one loop share one session."""
        loop = asyncio.get_running_loop()
        pooled = self._sessions.get(base_url)
        if pooled is not None and pooled.loop is not loop:
            del self._sessions[base_url]
            await self._discard(pooled)
            pooled = self._sessions.get(base_url)  # a concurrent caller may have made one meanwhile
        if pooled is not None and not pooled.session.closed:
            return pooled.session
        connector = aiohttp.TCPConnector(limit=self._pool_size, limit_per_host=self._pool_size)
        session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout_s)
        )
        self._sessions[base_url] = _PooledSession(session, loop)
        self.sessions_created += 1
        return session

    @staticmethod
    async def _discard(pooled: _PooledSession) -> None:
        """Close a session of another loop: from that loop while it runs; else here, best effort
        (transports of a closed loop cannot be closed cleanly, but the session is marked closed)."""
        if pooled.session.closed:
            return
        if pooled.loop.is_running():
            asyncio.run_coroutine_threadsafe(pooled.session.close(), pooled.loop)
            return
        try:
            await pooled.session.close()
        except RuntimeError:  # "Event loop is closed" from a transport of the dead loop
            pass

    def open_sessions(self) -> int:
        return sum(1 for pooled in self._sessions.values() if not pooled.session.closed)

    async def aclose(self) -> None:
        """Close every session; safe to call twice (a later `session()` opens a fresh one)."""
        loop = asyncio.get_running_loop()
        sessions, self._sessions = self._sessions, {}
        for pooled in sessions.values():
            if pooled.loop is loop:
                await pooled.session.close()
            else:
                await self._discard(pooled)
