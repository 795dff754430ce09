"""`HTTPSessionPool`: lazy creation inside the loop, one session per base URL with the configured
connector limit and timeout, reuse of kept-alive connections, close, and a fresh session per loop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from fake_openai import FakeOpenAIServer

from tldw_Server_API.app.core.Embeddings.connection_pool import HTTPSessionPool

BODY = {"model": "m", "input": ["x"]}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


def test_nothing_is_created_before_first_use() -> None:
    pool = HTTPSessionPool(pool_size=3, timeout_s=2.0)
    assert pool.sessions_created == 0 and pool.open_sessions() == 0
    pending = pool.session("http://a")
    with pytest.raises(RuntimeError):  # no running loop: sessions are only made inside one
        pending.send(None)
    pending.close()
    assert pool.sessions_created == 0


@pytest.mark.parametrize(("size", "timeout"), [(0, 1.0), (1, 0.0)])
def test_invalid_limits_are_refused(size: int, timeout: float) -> None:
    with pytest.raises(ValueError):
        HTTPSessionPool(pool_size=size, timeout_s=timeout)


def test_one_session_per_base_url_with_the_configured_limits() -> None:
    pool = HTTPSessionPool(pool_size=3, timeout_s=2.5)

    async def main() -> None:
        a1, a2, b = await pool.session("http://a/v1"), await pool.session("http://a/v1"), await pool.session("http://b")
        assert a1 is a2 and a1 is not b
        assert isinstance(a1.connector, aiohttp.TCPConnector) and a1.connector.limit == 3
        assert a1.timeout.total == 2.5
        assert pool.open_sessions() == 2
        await pool.aclose()
        assert a1.closed and b.closed and pool.open_sessions() == 0
        await pool.aclose()  # twice is fine
        fresh = await pool.session("http://a/v1")
        assert fresh is not a1 and not fresh.closed
        await pool.aclose()

    asyncio.run(main())
    assert pool.sessions_created == 3


def test_concurrent_first_use_shares_one_session() -> None:
    pool = HTTPSessionPool(pool_size=2, timeout_s=1.0)

    async def main() -> None:
        sessions = await asyncio.gather(*(pool.session("http://a") for _ in range(10)))
        assert len({id(s) for s in sessions}) == 1
        await pool.aclose()

    asyncio.run(main())
    assert pool.sessions_created == 1


def test_connections_are_kept_alive_and_reused(fake: FakeOpenAIServer) -> None:
    fake.reset()
    pool = HTTPSessionPool(pool_size=2, timeout_s=5.0)

    async def main() -> None:
        for _ in range(4):
            session = await pool.session(fake.base_url)
            async with session.post(f"{fake.base_url}/embeddings", json=BODY) as response:
                assert response.status == 200
                await response.read()
        await pool.aclose()

    asyncio.run(main())
    assert len(fake.requests) == 4 and len({r.peer for r in fake.requests}) == 1


def test_a_new_loop_gets_a_new_session_and_the_old_one_is_closed() -> None:
    pool = HTTPSessionPool(pool_size=2, timeout_s=1.0)

    async def get() -> aiohttp.ClientSession:
        return await pool.session("http://a")

    first = asyncio.run(get())  # that loop is gone now

    async def second() -> aiohttp.ClientSession:
        session = await pool.session("http://a")
        assert not session.closed
        await pool.aclose()
        return session

    assert asyncio.run(second()) is not first
    assert first.closed and pool.sessions_created == 2
