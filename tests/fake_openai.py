"""A real OpenAI-compatible embeddings server on 127.0.0.1 (aiohttp.web in a background thread), the
network seam that stands in for api.openai.com and local OpenAI-compatible servers in tests.

`POST /v1/embeddings` answers like OpenAI: deterministic unit vectors per input (`expected_vector`),
float or base64 per `encoding_format`, `dimensions` honoured, `usage`, rows in reverse order (so
clients must re-order by `index`). It records every request and can be told to fail the next N.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from aiohttp import web

# Put in every error body: a test asserts it never reaches an error message or a log line.
SECRET_MARKER = "UPSTREAM-SECRET-7f3c9a-do-not-leak"

FailureKind = Literal[
    "500",              # HTTP 500 (or `status`), OpenAI-style error body
    "429",              # HTTP 429 with `Retry-After: <retry_after>` when given
    "status",           # any HTTP status given as `status` (400, 401, 403, 404, 503...)
    "slow",             # answer normally, but only after `delay` seconds
    "malformed_json",   # 200 with a truncated JSON body
    "wrong_count",      # 200 with one row too few
    "wrong_width",      # 200 with the last row one value short
    "nan",              # 200 with a NaN in the first row
    "duplicate_index",  # 200 with index 0 twice
    "disconnect",       # close the connection without answering
]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any                   # parsed JSON, or None when the body was not JSON
    peer: tuple[str, int]       # client address: one port across requests = one reused connection


@dataclass
class _Failure:
    kind: FailureKind
    remaining: int
    retry_after: str | None
    delay: float
    status: int


@dataclass
class _State:
    requests: list[RecordedRequest] = field(default_factory=list)
    failures: deque[_Failure] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)


def expected_tokens(item: str | list[int]) -> int:
    """The fake's `usage` per input: token arrays their length, text its whitespace-split words."""
    return len(item) if isinstance(item, list) else max(1, len(item.split()))


def expected_vector(item: str | list[int], width: int = 8, dimensions: int | None = None) -> np.ndarray:
    """The fake's unit float32 vector for one input (seeded by sha256 of the text or token ids);
    with `dimensions`, the first N values re-normalised, as OpenAI's text-embedding-3 does."""
    key = f"t:{','.join(map(str, item))}" if isinstance(item, list) else f"s:{item}"
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(width)
    if dimensions is not None:
        vector = vector[:dimensions]
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"message": f"{message} [{SECRET_MARKER}]", "type": "fake_error", "code": str(status)}}
    return web.json_response(body, status=status, headers=headers)


def _inputs(body: Any) -> list[str | list[int]] | None:
    """OpenAI's four input shapes -> a list of items; None when the shape is wrong."""
    raw = body.get("input") if isinstance(body, dict) else None
    if isinstance(raw, str) and raw:
        return [raw]
    if not isinstance(raw, list) or not raw:
        return None
    if all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        return [list(raw)]
    items: list[str | list[int]] = []
    for item in raw:
        if isinstance(item, str) and item:
            items.append(item)
        elif isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
            items.append(list(item))
        else:
            return None
    return items


class FakeOpenAIServer:
    """`with FakeOpenAIServer() as fake:` then point a client at `fake.base_url` (ends in /v1).

    `width`: vector width of every model (`widths` overrides per model); `api_key`: when set, any
    other bearer gets 401; `shuffle`: answer rows in reverse order (default); `floats_only`: ignore
    `encoding_format` and always send float lists (as some local servers do); `ignore_dimensions`:
    answer full-width vectors whatever `dimensions` says. `max_in_flight` is
    the most embedding requests it was serving at once."""

    def __init__(
        self, *, width: int = 8, widths: dict[str, int] | None = None, api_key: str | None = None,
        shuffle: bool = True, floats_only: bool = False, ignore_dimensions: bool = False,
    ) -> None:
        self.width = width
        self.widths = dict(widths or {})
        self.api_key = api_key
        self.shuffle = shuffle
        self.floats_only = floats_only
        self.ignore_dimensions = ignore_dimensions
        self.in_flight = 0
        self.max_in_flight = 0
        self._state = _State()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # --- test-facing API ------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    def fail_next(
        self, kind: FailureKind, *, times: int = 1, retry_after: float | str | None = None,
        delay: float = 5.0, status: int = 500,
    ) -> FakeOpenAIServer:
        """Queue a failure for the next `times` embedding requests (after earlier queued ones)."""
        if kind == "429":
            status = 429
        text = None if retry_after is None else str(retry_after)
        with self._state.lock:
            self._state.failures.append(_Failure(kind, times, text, delay, status))
        return self

    def reset(self) -> None:
        """Forget requests and queued failures; restore the default options (keeps `api_key`)."""
        with self._state.lock:
            self._state.requests.clear()
            self._state.failures.clear()
            self.max_in_flight = self.in_flight
        self.shuffle, self.floats_only, self.ignore_dimensions = True, False, False

    def width_of(self, model: str) -> int:
        return self.widths.get(model, self.width)

    # --- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> FakeOpenAIServer:
        self._thread = threading.Thread(target=self._serve, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the fake OpenAI server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(self._stop)
            self._thread.join(timeout=30)

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        loop.run_until_complete(self._runner.setup())
        loop.run_until_complete(web.SockSite(self._runner, self._sock).start())
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._runner.cleanup())
        loop.close()

    def _stop(self) -> None:
        assert self._release is not None and self._loop is not None
        self._release.set()  # wakes "slow" handlers so shutdown never waits on them
        self._loop.stop()

    # --- the endpoint ---------------------------------------------------------------------
    def _take_failure(self) -> _Failure | None:
        with self._state.lock:
            if not self._state.failures:
                return None
            failure = self._state.failures[0]
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._state.failures.popleft()
            return failure

    async def _record(self, request: web.Request) -> Any:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        peer = request.transport.get_extra_info("peername") if request.transport else ("", 0)
        with self._state.lock:
            self._state.requests.append(RecordedRequest(
                request.method, request.path, dict(request.headers), body, (str(peer[0]), int(peer[1]))
            ))
            return body

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        with self._state.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._handle(request)
        finally:
            with self._state.lock:
                self.in_flight -= 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        request_id = {"x-request-id": f"req_fake_{len(self.requests)}"}
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided", request_id)
        failure = self._take_failure()
        if failure is not None:
            early = await self._fail_early(request, failure, request_id)
            if early is not None:
                return early
        items = _inputs(body)
        if items is None or not isinstance(body.get("model"), str):
            return _error(400, "'input' or 'model' is invalid", request_id)
        width = self.width_of(body["model"])
        dimensions = None if self.ignore_dimensions else body.get("dimensions")
        if dimensions is not None and (not isinstance(dimensions, int) or not 1 <= dimensions <= width):
            return _error(400, "'dimensions' is out of range", request_id)
        vectors = [expected_vector(item, width, dimensions) for item in items]
        return self._answer(body, items, vectors, failure, request_id)

    async def _fail_early(
        self, request: web.Request, failure: _Failure, headers: dict[str, str]
    ) -> web.StreamResponse | None:
        if failure.kind in ("500", "status"):
            return _error(failure.status, "The server had an error", headers)
        if failure.kind == "429":
            extra = {} if failure.retry_after is None else {"Retry-After": failure.retry_after}
            return _error(429, "Rate limit reached", {**headers, **extra})
        if failure.kind == "malformed_json":
            return web.Response(body=f'{{"data": [{{"embedding": "{SECRET_MARKER}'.encode(),
                                content_type="application/json", headers=headers)
        if failure.kind == "slow":
            assert self._release is not None
            try:
                await asyncio.wait_for(self._release.wait(), failure.delay)
            except TimeoutError:
                pass
        if failure.kind == "disconnect" and request.transport is not None:
            request.transport.close()
            raise asyncio.CancelledError
        return None

    def _answer(
        self, body: dict[str, Any], items: list[str | list[int]], vectors: list[np.ndarray],
        failure: _Failure | None, headers: dict[str, str],
    ) -> web.Response:
        kind = failure.kind if failure is not None else None
        if kind == "nan":
            vectors[0] = vectors[0].copy()
            vectors[0][0] = np.nan
        if kind == "wrong_width":
            vectors[-1] = vectors[-1][:-1]
        indexes = list(range(len(items)))
        if kind == "wrong_count":
            indexes = indexes[:-1]
        if kind == "duplicate_index":
            indexes = [0, *indexes[:-1]] if len(indexes) > 1 else [0, 0]
        as_base64 = body.get("encoding_format") == "base64" and not self.floats_only
        data = [
            {"object": "embedding", "index": i,
             "embedding": base64.b64encode(vectors[i].astype("<f4").tobytes()).decode("ascii")
             if as_base64 else [float(x) for x in vectors[i]]}
            for i in indexes
        ]
        if self.shuffle:
            data.reverse()
        tokens = sum(expected_tokens(item) for item in items)
        payload = {"object": "list", "data": data, "model": body["model"],
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return web.Response(text=json.dumps(payload), content_type="application/json", headers=headers)
