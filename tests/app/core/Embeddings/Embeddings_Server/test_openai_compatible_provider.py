"""`openai` and `local_api` providers against a real fake OpenAI server on 127.0.0.1: the wire
format, re-ordering, splitting, token arrays, native dimensions, every failure mode mapped to the
right domain error (never leaking the upstream body or the key), auth, and session reuse."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from fake_openai import SECRET_MARKER, FailureKind, FakeOpenAIServer, expected_tokens, expected_vector
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger
from support import free_port, make_settings

from tldw_Server_API.app.core.config import RemoteAPIConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import EmbeddingProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.openai_compatible_provider import (
    LocalAPIProvider,
    OpenAICompatibleProvider,
    OpenAIProvider,
    apportion_tokens,
    assemble_rows,
    create_local_api_provider,
    create_openai_provider,
    parse_retry_after,
    redact_url,
)
from tldw_Server_API.app.core.errors import (
    InvalidInput,
    ProviderError,
    ProviderNotImplemented,
    ProviderTransientError,
    UpstreamRejectedRequest,
)

KEY = "sk-test-KEY-0123456789abcdef"
SMALL = "text-embedding-3-small"
T = TypeVar("T")
P = TypeVar("P", bound=OpenAICompatibleProvider)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAIServer) -> FakeOpenAIServer:
    server.reset()
    return server


def remote(base_url: str | None, key: str | None = KEY, *, batch: int = 2048, pool: int = 4,
           timeout: float = 5.0) -> RemoteAPIConfig:
    return RemoteAPIConfig(base_url=base_url, api_key=key, pool_size=pool, timeout_s=timeout, max_batch_size=batch)


def using(provider: P, work: Callable[[P], Awaitable[T]]) -> T:
    """Run `work(provider)` in a fresh loop and close the provider's sessions in that loop."""

    async def main() -> T:
        try:
            return await work(provider)
        finally:
            await provider.aclose()

    return asyncio.run(main())


def embed(provider: OpenAICompatibleProvider, model: str, items: list[Any], **kwargs: Any) -> Any:
    return using(provider, lambda p: p.embed(model, items, **kwargs))


def failure_of(provider: OpenAICompatibleProvider, model: str = "m", items: list[Any] | None = None) -> Exception:
    with pytest.raises(ProviderError) as caught:
        embed(provider, model, items or ["alpha", "beta"])
    return caught.value


# --- the wire format and the happy path ---------------------------------------------------
def test_base64_on_the_wire_and_exact_vectors(fake: FakeOpenAIServer) -> None:
    texts = ["first text", "second", "third one here"]
    batch = embed(OpenAIProvider(remote(fake.base_url)), SMALL, texts)
    (request,) = fake.requests
    assert request.path == "/v1/embeddings"
    assert request.body == {"model": SMALL, "input": texts, "encoding_format": "base64"}
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert batch.vectors.dtype == np.float32 and batch.vectors.shape == (3, 8)
    np.testing.assert_array_equal(batch.vectors, np.stack([expected_vector(t) for t in texts]))


def test_float_rows_accepted_when_the_server_ignores_base64(fake: FakeOpenAIServer) -> None:
    fake.floats_only = True
    texts = ["a", "b b", "c c c"]
    batch = embed(LocalAPIProvider(remote(fake.base_url, None)), "any-model", texts)
    np.testing.assert_array_equal(batch.vectors, np.stack([expected_vector(t) for t in texts]))


@pytest.mark.parametrize("shuffle", [True, False])
def test_rows_are_put_back_in_input_order_by_index(fake: FakeOpenAIServer, shuffle: bool) -> None:
    fake.shuffle = shuffle
    texts = [f"text number {i}" for i in range(9)]
    batch = embed(OpenAIProvider(remote(fake.base_url)), SMALL, texts)
    np.testing.assert_array_equal(batch.vectors, np.stack([expected_vector(t) for t in texts]))


def test_large_requests_are_split_at_max_batch_size(fake: FakeOpenAIServer) -> None:
    texts = [f"input {i} " * (i + 1) for i in range(7)]
    batch = embed(OpenAIProvider(remote(fake.base_url, batch=3)), SMALL, texts)
    sent = [r.body["input"] for r in fake.requests]
    assert sorted(len(chunk) for chunk in sent) == [1, 3, 3]
    assert sorted(t for chunk in sent for t in chunk) == sorted(texts)
    np.testing.assert_array_equal(batch.vectors, np.stack([expected_vector(t) for t in texts]))
    assert sum(batch.token_counts) == sum(expected_tokens(t) for t in texts)  # what the upstream billed


def test_split_requests_run_concurrently_but_bounded_by_the_pool(fake: FakeOpenAIServer) -> None:
    fake.fail_next("slow", times=6, delay=0.2)  # "slow" = answers normally after the delay
    embed(LocalAPIProvider(remote(fake.base_url, batch=1, pool=2)), "m", [f"t{i}" for i in range(6)])
    assert len(fake.requests) == 6
    assert fake.max_in_flight == 2


def test_token_arrays_are_passed_through_verbatim(fake: FakeOpenAIServer) -> None:
    items: list[Any] = [[1, 2, 3], "plain text", [100257, 42]]
    batch = embed(OpenAIProvider(remote(fake.base_url)), SMALL, items)
    assert OpenAIProvider.accepts_token_arrays and LocalAPIProvider.accepts_token_arrays
    assert fake.requests[0].body["input"] == items
    np.testing.assert_array_equal(batch.vectors, np.stack([expected_vector(i) for i in items]))
    assert sum(batch.token_counts) == sum(expected_tokens(i) for i in items)


def test_usage_is_spread_over_inputs_and_sums_to_the_bill(fake: FakeOpenAIServer) -> None:
    texts = ["one two three four five six", "seven", "eight nine"]
    batch = embed(OpenAIProvider(remote(fake.base_url)), SMALL, texts, token_counts=[6, 1, 2])
    assert batch.token_counts == [6, 1, 2]  # weights proportional to the bill: exact split
    batch = embed(OpenAIProvider(remote(fake.base_url)), SMALL, texts)  # no counts: estimates as weights
    assert sum(batch.token_counts) == 9 and len(batch.token_counts) == 3


# --- dimensions ---------------------------------------------------------------------------
def test_dimensions_are_native_for_text_embedding_3_only(fake: FakeOpenAIServer) -> None:
    openai = OpenAIProvider(remote(fake.base_url))
    local = LocalAPIProvider(remote(fake.base_url))
    assert openai.native_dimensions(SMALL) and openai.native_dimensions("text-embedding-3-large")
    assert not openai.native_dimensions("text-embedding-ada-002")
    assert not local.native_dimensions(SMALL)

    batch = embed(openai, SMALL, ["hello"], dimensions=4)
    assert fake.requests[-1].body["dimensions"] == 4
    np.testing.assert_allclose(batch.vectors[0], expected_vector("hello", dimensions=4), rtol=1e-6)

    for provider, model in ((OpenAIProvider(remote(fake.base_url)), "text-embedding-ada-002"),
                            (LocalAPIProvider(remote(fake.base_url)), SMALL)):
        batch = embed(provider, model, ["hello"], dimensions=4)
        assert "dimensions" not in fake.requests[-1].body
        assert batch.vectors.shape == (1, 8)  # the service applies its dimension policy


def test_dimensions_beyond_the_native_width_are_refused_before_any_request(fake: FakeOpenAIServer) -> None:
    for bad in (0, 1537):
        with pytest.raises(InvalidInput):
            embed(OpenAIProvider(remote(fake.base_url)), SMALL, ["x"], dimensions=bad)
    assert fake.requests == []


def test_an_upstream_that_ignores_dimensions_is_malformed(fake: FakeOpenAIServer) -> None:
    fake.ignore_dimensions = True
    with pytest.raises(ProviderError, match="8 values, 4 were requested"):
        embed(OpenAIProvider(remote(fake.base_url)), SMALL, ["a", "b"], dimensions=4)


# --- failures -----------------------------------------------------------------------------
def test_429_carries_retry_after_in_seconds(fake: FakeOpenAIServer) -> None:
    fake.fail_next("429", retry_after=7)
    error = failure_of(OpenAIProvider(remote(fake.base_url)))
    assert isinstance(error, ProviderTransientError) and error.retry_after == 7.0
    assert len(fake.requests) == 1  # a single attempt: retries belong to the wrapping layer


def test_429_carries_retry_after_as_an_http_date(fake: FakeOpenAIServer) -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    fake.fail_next("429", retry_after=format_datetime(now + timedelta(seconds=30), usegmt=True))
    provider = OpenAIProvider(remote(fake.base_url), clock=lambda: now)
    error = failure_of(provider)
    assert isinstance(error, ProviderTransientError) and error.retry_after == 30.0


@pytest.mark.parametrize(("kind", "status"), [("500", 500), ("status", 503), ("status", 408), ("disconnect", 0)])
def test_server_errors_and_disconnects_are_transient(fake: FakeOpenAIServer, kind: Any, status: int) -> None:
    fake.fail_next(kind, status=status)
    error = failure_of(LocalAPIProvider(remote(fake.base_url)))
    assert isinstance(error, ProviderTransientError)


def test_a_timeout_is_transient() -> None:
    with FakeOpenAIServer() as fake:  # its own server: the stalled handler ends when it stops
        fake.fail_next("slow", delay=5.0)
        error = failure_of(OpenAIProvider(remote(fake.base_url, timeout=0.3)))
    assert isinstance(error, ProviderTransientError) and "0.3s" in str(error)


def test_connection_refused_is_transient() -> None:
    error = failure_of(LocalAPIProvider(remote(f"http://127.0.0.1:{free_port()}/v1")))
    assert isinstance(error, ProviderTransientError)


@pytest.mark.parametrize("kind", ["malformed_json", "wrong_count", "wrong_width", "nan", "duplicate_index"])
def test_malformed_answers_are_permanent_provider_errors(fake: FakeOpenAIServer, kind: Any) -> None:
    fake.fail_next(kind)
    error = failure_of(OpenAIProvider(remote(fake.base_url)), SMALL, ["a", "b", "c"])
    assert type(error) is ProviderError
    assert "malformed" in str(error) or "not a JSON object" in str(error)


@pytest.mark.parametrize(("status", "phrase"), [(400, "refused the request"), (404, "HTTP 404"),
                                                (401, "rejected the API key"), (403, "rejected the API key")])
def test_client_errors_are_permanent(fake: FakeOpenAIServer, status: int, phrase: str) -> None:
    fake.fail_next("status", status=status)
    error = failure_of(OpenAIProvider(remote(fake.base_url)))
    assert type(error) is (UpstreamRejectedRequest if status == 400 else ProviderError) and phrase in str(error)


def test_one_failing_chunk_fails_the_whole_call() -> None:
    # A server of its own: the chunks still in flight when the call fails may reach the server
    # after this test ends, and on the shared one they would take the next test's queued failure.
    with FakeOpenAIServer() as own:
        own.fail_next("500")
        with pytest.raises(ProviderTransientError):
            embed(OpenAIProvider(remote(own.base_url, batch=1)), SMALL, ["a", "b", "c"])


def test_upstream_bodies_and_keys_never_reach_messages_or_logs(fake: FakeOpenAIServer) -> None:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    messages = []
    cases: list[tuple[FailureKind, int]] = [("500", 500), ("status", 400), ("status", 401), ("429", 429),
                                            ("malformed_json", 0), ("disconnect", 0)]
    try:
        for kind, status in cases:
            fake.fail_next(kind, status=status)
            messages.append(str(failure_of(OpenAIProvider(remote(fake.base_url)))))
    finally:
        logger.remove(sink)
    assert len(messages) == len(cases) and lines, "each failure is logged"
    for text in messages + lines:
        assert SECRET_MARKER not in text and KEY not in text
    assert any("req_fake_" in line for line in lines)  # the upstream request id is logged


# --- auth, configuration, metadata ------------------------------------------------------------
def test_a_key_protected_upstream() -> None:
    with FakeOpenAIServer(api_key=KEY) as fake:
        error = failure_of(OpenAIProvider(remote(fake.base_url, "sk-wrong")))
        assert type(error) is ProviderError and "OPENAI_API_KEY" in str(error) and "sk-wrong" not in str(error)
        error = failure_of(LocalAPIProvider(remote(fake.base_url, None)))
        assert "rejected the API key" in str(error) and "EMBEDDINGS_LOCAL_API_KEY" in str(error)
        assert "Authorization" not in fake.requests[-1].headers
        batch = embed(LocalAPIProvider(remote(fake.base_url, KEY)), "m", ["ok"])
        assert batch.vectors.shape == (1, 8)
        assert fake.requests[-1].headers["Authorization"] == f"Bearer {KEY}"


def test_local_api_without_a_key_sends_no_authorization(fake: FakeOpenAIServer) -> None:
    embed(LocalAPIProvider(remote(fake.base_url, None)), "m", ["x"])
    assert "Authorization" not in fake.requests[0].headers


def test_unset_base_url_or_openai_key_answers_501() -> None:
    cases = [(LocalAPIProvider(remote(None)), "EMBEDDINGS_LOCAL_API_URL"),
             (OpenAIProvider(remote(None)), "OPENAI_BASE_URL"),
             (OpenAIProvider(remote("http://127.0.0.1:9/v1", None)), "OPENAI_API_KEY")]
    for provider, env in cases:
        with pytest.raises(ProviderNotImplemented, match=env):
            embed(provider, "m", ["x"])
        with pytest.raises(ProviderNotImplemented, match=env):
            provider.model_info("m")
        assert asyncio.run(provider.health())["status"] == "unconfigured"


def test_model_info_and_capabilities(fake: FakeOpenAIServer) -> None:
    openai = OpenAIProvider(remote(fake.base_url))
    local = LocalAPIProvider(remote(fake.base_url))
    assert isinstance(openai, EmbeddingProvider) and isinstance(local, EmbeddingProvider)
    assert (openai.model_info(SMALL).dimension, openai.model_info(SMALL).max_tokens) == (1536, 8191)
    assert openai.model_info("text-embedding-3-large").dimension == 3072
    assert openai.model_info("text-embedding-ada-002").dimension == 1536
    other = openai.model_info("my-proxy-model")
    assert (other.dimension, other.max_tokens, other.provider) == (None, None, "openai")
    info = local.model_info(SMALL)
    assert (info.dimension, info.max_tokens, info.provider) == (None, None, "local_api")
    assert asyncio.run(openai.count_tokens(SMALL, ["x"])) is None
    assert openai.loaded_models() == [] and local.loaded_models() == []


def test_health_names_the_url_without_credentials() -> None:
    provider = LocalAPIProvider(remote("http://user:secret@127.0.0.1:8080/v1?api-key=abc", None))
    health = asyncio.run(provider.health())
    assert health == {"status": "healthy", "base_url": "http://127.0.0.1:8080/v1"}
    assert redact_url("https://[::1]:9000/v1#frag") == "https://[::1]:9000/v1"


def test_factories_build_from_settings(tmp_path: Path, fake: FakeOpenAIServer) -> None:
    settings = make_settings(tmp_path, openai_api_key=KEY, openai_base_url=fake.base_url + "/",
                             embeddings_local_api_url=fake.base_url, embeddings_max_batch_size=2)
    openai = create_openai_provider(settings.engine_config())
    local = create_local_api_provider(settings.engine_config())
    assert (openai.name, local.name) == ("openai", "local_api")
    embed(local, "m", ["a", "b", "c"])
    embed(openai, SMALL, ["d"])
    assert len(fake.requests) == 3 and fake.requests[-1].headers["Authorization"] == f"Bearer {KEY}"


def test_one_pooled_session_is_reused_across_calls(fake: FakeOpenAIServer) -> None:
    provider = LocalAPIProvider(remote(fake.base_url))

    async def three_calls(p: LocalAPIProvider) -> None:
        for i in range(3):
            await p.embed("m", [f"call {i}"])

    using(provider, three_calls)
    assert provider.pool.sessions_created == 1
    assert len({r.peer for r in fake.requests}) == 1  # one kept-alive TCP connection served all three


# --- pure helpers ---------------------------------------------------------------------------
@given(st.integers(0, 10_000), st.lists(st.integers(0, 500), min_size=1, max_size=40))
def test_apportion_tokens_sums_exactly_and_stays_near_each_share(total: int, weights: list[int]) -> None:
    parts = apportion_tokens(total, weights)
    clean = [max(1, w) for w in weights]
    assert sum(parts) == total and len(parts) == len(weights)
    for part, weight in zip(parts, clean, strict=True):
        assert part >= 0 and abs(part - total * weight / sum(clean)) < 1


def test_parse_retry_after() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_retry_after("12", None, now=now) == 12.0
    assert parse_retry_after("1.5", "250", now=now) == 0.25  # OpenAI's millisecond header wins
    assert parse_retry_after("-3", None, now=now) == 0.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), None, now=now) == 0.0
    assert parse_retry_after("Wed, 01 Jan 2030 00:01:00 GMT", None, now=now) == 60.0
    for junk in ("soon", "", "inf"):
        assert parse_retry_after(junk, None, now=now) is None
    assert parse_retry_after(None, None, now=now) is None


@pytest.mark.parametrize("data", [
    None, [{"index": 0, "embedding": [1.0]}],
    [{"index": 0, "embedding": [1.0]}, {"index": 2, "embedding": [1.0]}],
    [{"index": True, "embedding": [1.0]}, {"index": 1, "embedding": [1.0]}],
    [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": ["1.0"]}],
    [{"index": 0, "embedding": [[1.0]]}, {"index": 1, "embedding": [[1.0]]}],
    [{"index": 0, "embedding": "not base64!"}, {"index": 1, "embedding": "AAAA"}],
    [{"index": 0, "embedding": "AAA="}, {"index": 1, "embedding": "AAA="}],
    [{"index": 0, "embedding": [1e39]}, {"index": 1, "embedding": [1.0]}],
    [{"index": 0, "embedding": []}, {"index": 1, "embedding": []}],
])
def test_assemble_rows_refuses_malformed_data(data: Any) -> None:
    with pytest.raises(ProviderError, match="malformed"):
        assemble_rows(data, 2)


def test_assemble_rows_accepts_mixed_float_and_base64_rows() -> None:
    rows = [{"index": 1, "embedding": [0.5, -2.0]}, {"index": 0, "embedding": "AACAPwAAAEA="}]  # [1, 2]
    matrix = assemble_rows(rows, 2, 2)
    np.testing.assert_array_equal(matrix, np.array([[1.0, 2.0], [0.5, -2.0]], dtype=np.float32))
