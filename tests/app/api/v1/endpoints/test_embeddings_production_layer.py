"""HTTP tests of the embeddings production layer: the real app (TestClient, lifespan run) over a real
fake OpenAI server on 127.0.0.1. Remote providers, retries and Retry-After, malformed upstreams,
the circuit breaker and its admin routes, fallback to the bundled model, the cache, the metrics and
the model admin routes. One app for the module (the bundled model loads once); each test starts
with a quiet fake, closed breakers and an empty cache. Policy, rate limits and chains: `_limits`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_openai import SECRET_MARKER, FailureKind, FakeOpenAIServer, expected_vector
from fastapi.testclient import TestClient
from support import ADMIN_KEY, MODEL, assert_openai_error, make_settings, write_keys_file

from tldw_Server_API.app.main import create_app

SMALL = "openai:text-embedding-3-small"
WIDTHS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
OPENAI_KEY = "sk-upstream-OPENAI-key-0123456789"
LOCAL_KEY = "local-upstream-KEY-9876543210"
USER_KEY = "user-key-alice-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
USER = {"Authorization": f"Bearer {USER_KEY}"}
NO_KEY = {"Authorization": ""}
PIN_OPENAI = {"x-provider": "openai"}
THRESHOLD = 3    # breaker: consecutive failures that open it
RETRIES = 2      # so one request that keeps failing makes 3 attempts and opens the breaker


def embed(client: TestClient, headers: dict[str, str] | None = None, **payload: Any) -> Any:
    payload.setdefault("model", SMALL)
    return client.post("/api/v1/embeddings", json=payload, headers=headers or {})


def rows(response: Any) -> np.ndarray:
    data = response.json()["data"]
    assert [row["index"] for row in data] == list(range(len(data)))
    return np.array([
        np.frombuffer(base64.b64decode(r["embedding"]), dtype="<f4") if isinstance(r["embedding"], str)
        else np.array(r["embedding"], dtype=np.float32) for r in data
    ])


def upstream_inputs(fake: FakeOpenAIServer) -> list[Any]:
    return [item for request in fake.requests for item in request.body["input"]]


def admin_metrics(client: TestClient) -> dict[str, Any]:
    response = client.get("/api/v1/embeddings/metrics")
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_still_serving(client: TestClient, fake: FakeOpenAIServer, text: str = "still serving") -> None:
    before = len(fake.requests)
    response = embed(client, PIN_OPENAI, input=[f"{text} {time.monotonic_ns()}"])
    assert response.status_code == 200, response.text
    assert response.headers["x-embeddings-provider"] == "openai" and len(fake.requests) == before + 1


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(widths=WIDTHS) as fake:
        yield fake


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("production")


@pytest.fixture(scope="module")
def client(data: Path, tiktoken_dir: Path, server: FakeOpenAIServer) -> Iterator[TestClient]:
    settings = make_settings(
        data, tiktoken_dir, api_keys_file=write_keys_file(data, {"alice": USER_KEY}),
        openai_base_url=server.base_url, openai_api_key=OPENAI_KEY,
        embeddings_local_api_url=server.base_url, embeddings_local_api_key=LOCAL_KEY,
        embeddings_max_retries=RETRIES, embeddings_retry_base_delay=0.01, embeddings_retry_max_delay=2.0,
        embeddings_circuit_failure_threshold=THRESHOLD, auto_download_models=False,
    )
    with TestClient(create_app(settings), headers=ADMIN) as test_client:
        yield test_client


@pytest.fixture
def fake(server: FakeOpenAIServer, client: TestClient) -> FakeOpenAIServer:
    for provider in ("openai", "local_api"):
        assert client.post(f"/api/v1/embeddings/circuit-breakers/{provider}/reset").status_code == 200
    assert client.delete("/api/v1/embeddings/cache").status_code == 200
    server.reset()
    return server


# --- remote providers ------------------------------------------------------------------------------
def test_openai_provider_returns_the_upstream_vectors(client: TestClient, fake: FakeOpenAIServer) -> None:
    texts = ["alpha one", "beta two words", "gamma"]
    response = embed(client, USER, input=texts)
    assert response.status_code == 200, response.text
    assert response.headers["x-embeddings-provider"] == "openai"
    assert "x-embeddings-fallback-from" not in response.headers
    vectors = rows(response)
    assert vectors.shape == (3, 1536)  # the fake answers in reverse order: re-ordered by index
    assert np.allclose(vectors, [expected_vector(t, 1536) for t in texts], atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert response.json()["usage"] == {"prompt_tokens": 6, "total_tokens": 6}  # what the upstream billed
    (request,) = fake.requests
    assert request.body["model"] == "text-embedding-3-small" and request.body["input"] == texts
    assert request.body["encoding_format"] == "base64" and "dimensions" not in request.body
    assert request.headers["Authorization"] == f"Bearer {OPENAI_KEY}"


def test_dimensions_are_passed_natively_to_openai(client: TestClient, fake: FakeOpenAIServer) -> None:
    before = admin_metrics(client)["dimension_adjustments"]
    response = embed(client, input=["shrink me"], dimensions=256, encoding_format="base64")
    assert response.status_code == 200, response.text
    assert fake.requests[-1].body["dimensions"] == 256
    assert np.allclose(rows(response), [expected_vector("shrink me", 1536, 256)], atol=1e-6)
    assert admin_metrics(client)["dimension_adjustments"] == before  # native: no policy applied here


def test_official_openai_client_default_base64(client: TestClient, fake: FakeOpenAIServer) -> None:
    from openai import OpenAI

    api = OpenAI(base_url="http://testserver/api/v1", api_key=USER_KEY, http_client=client, max_retries=0)
    result = api.embeddings.create(model=SMALL, input=["client one", "client two"])  # sends base64
    got = np.array([row.embedding for row in result.data], dtype=np.float32)
    assert np.allclose(got, [expected_vector(t, 1536) for t in ("client one", "client two")], atol=1e-6)
    assert len(fake.requests) == 1


def test_local_api_provider_sends_its_key(client: TestClient, fake: FakeOpenAIServer) -> None:
    response = embed(client, USER, input=["local a", "local b"], model="local_api:nomic-embed-text")
    assert response.status_code == 200, response.text
    assert response.headers["x-embeddings-provider"] == "local_api"
    assert np.allclose(rows(response), [expected_vector(t, 8) for t in ("local a", "local b")], atol=1e-6)
    (request,) = fake.requests
    assert request.body["model"] == "nomic-embed-text"
    assert request.headers["Authorization"] == f"Bearer {LOCAL_KEY}"


def test_unknown_provider_prefix_or_header_is_400(client: TestClient, fake: FakeOpenAIServer) -> None:
    assert_openai_error(embed(client, input="a", model="nosuch:model"), 400, "unknown_provider")
    assert_openai_error(embed(client, {"x-provider": "nosuch"}, input="a"), 400, "unknown_provider")
    assert fake.requests == []
    assert_still_serving(client, fake)


# --- retries ---------------------------------------------------------------------------------------
def test_retry_waits_for_the_upstream_retry_after(client: TestClient, fake: FakeOpenAIServer) -> None:
    retries = admin_metrics(client)["retries"]
    fake.fail_next("429", retry_after=1)
    started = time.monotonic()
    response = embed(client, PIN_OPENAI, input=["retry after me"])
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert len(fake.requests) == 2
    assert elapsed >= 0.95  # the jittered backoff alone would be <= 0.01 s
    assert admin_metrics(client)["retries"] == retries + 1


def test_transient_500s_are_retried(client: TestClient, fake: FakeOpenAIServer) -> None:
    fake.fail_next("500", times=2)
    response = embed(client, PIN_OPENAI, input=["flaky upstream"])
    assert response.status_code == 200, response.text
    assert len(fake.requests) == 3
    assert np.allclose(rows(response), [expected_vector("flaky upstream", 1536)], atol=1e-6)
    breaker = client.get("/api/v1/embeddings/circuit-breakers").json()["circuit_breakers"]["openai"]
    assert breaker["state"] == "closed" and breaker["failures"] == 0  # the success reset the count


def test_upstream_400_is_neither_retried_nor_a_fallback(client: TestClient, fake: FakeOpenAIServer) -> None:
    fake.fail_next("status", status=400)
    response = embed(client, input=["refused"])  # fallback chain active: a 4xx must not use it
    error = assert_openai_error(response, 502, "upstream_rejected_request")
    assert error["type"] == "api_error"
    assert len(fake.requests) == 1
    assert SECRET_MARKER not in response.text
    assert_still_serving(client, fake)


def test_upstream_400s_never_open_the_breaker(client: TestClient, fake: FakeOpenAIServer) -> None:
    fake.fail_next("status", status=400, times=THRESHOLD + 2)   # one caller's bad requests
    for n in range(THRESHOLD + 2):
        assert_openai_error(embed(client, PIN_OPENAI, input=[f"bad {n}"]), 502, "upstream_rejected_request")
    breaker = client.get("/api/v1/embeddings/circuit-breakers").json()["circuit_breakers"]["openai"]
    assert breaker["state"] == "closed" and breaker["failures"] == 0
    assert_still_serving(client, fake)   # everybody else is still served by the upstream


@pytest.mark.parametrize("kind", ["malformed_json", "wrong_count", "nan"])
def test_malformed_upstream_is_502_and_leaks_nothing(
    client: TestClient, fake: FakeOpenAIServer, kind: FailureKind
) -> None:
    fake.fail_next(kind)
    response = embed(client, PIN_OPENAI, input=["bad one", "bad two"])
    assert_openai_error(response, 502, "provider_error")
    assert len(fake.requests) == 1  # not retried: the upstream answered, wrongly
    exposed = response.text + repr(dict(response.headers))
    assert SECRET_MARKER not in exposed and OPENAI_KEY not in exposed and LOCAL_KEY not in exposed
    assert_still_serving(client, fake)


# --- circuit breaker -------------------------------------------------------------------------------
def test_circuit_breaker_opens_rejects_and_resets(client: TestClient, fake: FakeOpenAIServer) -> None:
    fake.fail_next("500", times=THRESHOLD)
    assert_openai_error(embed(client, PIN_OPENAI, input=["trip"]), 502, "provider_unavailable")
    assert len(fake.requests) == THRESHOLD

    response = embed(client, PIN_OPENAI, input=["rejected"])
    assert_openai_error(response, 503, "circuit_open")
    assert int(response.headers["Retry-After"]) >= 1
    assert len(fake.requests) == THRESHOLD  # the open circuit never reached the upstream
    breakers = client.get("/api/v1/embeddings/circuit-breakers").json()["circuit_breakers"]
    assert breakers["openai"]["state"] == "open"
    health = client.get("/api/v1/embeddings/health", headers=NO_KEY).json()
    assert health["status"] == "degraded" and health["circuit_breakers"]["openai"]["state"] == "open"
    assert 'embeddings_circuit_breaker_state{provider="openai"} 2.0' in client.get("/metrics").text

    handed_over = embed(client, input=["open circuit falls back"])  # no pin: the chain takes over
    assert handed_over.status_code == 200 and handed_over.headers["x-embeddings-provider"] == "huggingface"
    assert len(fake.requests) == THRESHOLD

    assert_openai_error(client.get("/api/v1/embeddings/circuit-breakers", headers=USER), 403)
    assert_openai_error(client.post("/api/v1/embeddings/circuit-breakers/openai/reset", headers=USER), 403)
    assert_openai_error(client.post("/api/v1/embeddings/circuit-breakers/openai/reset", headers=NO_KEY), 401)
    assert_openai_error(client.post("/api/v1/embeddings/circuit-breakers/nosuch/reset"), 404)
    reset = client.post("/api/v1/embeddings/circuit-breakers/openai/reset")
    assert reset.status_code == 200 and reset.json()["breaker"]["state"] == "closed"
    assert_still_serving(client, fake)
    assert client.get("/api/v1/embeddings/health", headers=NO_KEY).json()["status"] == "healthy"
    assert 'embeddings_circuit_breaker_state{provider="openai"} 0.0' in client.get("/metrics").text


# --- fallback --------------------------------------------------------------------------------------
def test_fallback_re_embeds_the_whole_request_with_huggingface(client: TestClient, fake: FakeOpenAIServer) -> None:
    assert embed(client, input=["fb cached"]).status_code == 200  # an openai row sits in the cache
    before = admin_metrics(client)
    fake.fail_next("500", times=RETRIES + 1)
    response = embed(client, input=["fb cached", "fb fresh"])
    assert response.status_code == 200, response.text
    assert response.headers["x-embeddings-provider"] == "huggingface"
    assert response.headers["x-embeddings-fallback-from"] == "openai"
    assert response.json()["model"] == SMALL
    vectors = rows(response)
    assert vectors.shape == (2, 384)  # every row from MiniLM, none from the openai cache
    direct = embed(client, input=["fb cached", "fb fresh"], model=f"huggingface:{MODEL}")
    assert direct.headers["x-cache"] == "hit" and np.array_equal(rows(direct), vectors)
    after = admin_metrics(client)
    assert after["fallbacks"] == before["fallbacks"] + 1
    assert after["provider_failures"] == before["provider_failures"] + 1
    assert after["retries"] == before["retries"] + RETRIES


def test_x_provider_header_turns_fallback_off(client: TestClient, fake: FakeOpenAIServer) -> None:
    fallbacks = admin_metrics(client)["fallbacks"]
    fake.fail_next("500", times=RETRIES + 1)
    response = embed(client, PIN_OPENAI, input=["pinned"])
    assert_openai_error(response, 502, "provider_unavailable")
    assert "x-embeddings-provider" not in response.headers
    assert admin_metrics(client)["fallbacks"] == fallbacks
    client.post("/api/v1/embeddings/circuit-breakers/openai/reset")
    assert_still_serving(client, fake)


# --- cache -----------------------------------------------------------------------------------------
def test_cache_hit_partial_and_only_misses_go_upstream(client: TestClient, fake: FakeOpenAIServer) -> None:
    before = admin_metrics(client)
    first = embed(client, input=["c1", "c2"])
    assert first.headers["x-cache"] == "miss" and upstream_inputs(fake) == ["c1", "c2"]
    again = embed(client, input=["c1", "c2"])
    assert again.headers["x-cache"] == "hit" and np.array_equal(rows(again), rows(first))
    assert len(fake.requests) == 1
    mixed = embed(client, input=["c2", "c3"])
    assert mixed.headers["x-cache"] == "partial" and upstream_inputs(fake)[2:] == ["c3"]
    assert np.array_equal(rows(mixed)[0], rows(first)[1])

    narrow = embed(client, input=["c1"], dimensions=256)  # another width: its own cache entry
    assert narrow.headers["x-cache"] == "miss" and rows(narrow).shape == (1, 256)
    assert embed(client, input=["c1"], dimensions=256).headers["x-cache"] == "hit"
    other = embed(client, input=["c1"], model="openai:text-embedding-ada-002")  # another model: its own
    assert other.headers["x-cache"] == "miss" and fake.requests[-1].body["model"] == "text-embedding-ada-002"
    assert np.allclose(rows(other), [expected_vector("c1", 1536)], atol=1e-6)
    after = admin_metrics(client)
    assert after["cache_hits"] - before["cache_hits"] == 4  # 2 + 1 + 1
    assert after["cache_misses"] - before["cache_misses"] == 5  # 2 + 1 + 1 + 1


def test_clearing_the_cache_is_admin_only(client: TestClient, fake: FakeOpenAIServer) -> None:
    embed(client, input=["cl1", "cl2"])
    assert_openai_error(client.delete("/api/v1/embeddings/cache", headers=USER), 403, "permission_denied")
    assert_openai_error(client.delete("/api/v1/embeddings/cache", headers=NO_KEY), 401)
    assert embed(client, input=["cl1"]).headers["x-cache"] == "hit"
    cleared = client.delete("/api/v1/embeddings/cache")
    assert cleared.status_code == 200 and cleared.json() == {"removed": 2}
    assert client.get("/api/v1/embeddings/health").json()["cache"]["size"] == 0
    assert embed(client, input=["cl1"]).headers["x-cache"] == "miss"
    assert upstream_inputs(fake) == ["cl1", "cl2", "cl1"]


# --- metrics ---------------------------------------------------------------------------------------
def test_metrics_json_and_prometheus(client: TestClient, fake: FakeOpenAIServer) -> None:
    assert_openai_error(client.get("/api/v1/embeddings/metrics", headers=USER), 403)
    before = admin_metrics(client)
    reduced = embed(client, input=["m1"], model="local_api:nomic-embed-text", dimensions=4)
    assert rows(reduced).shape == (1, 4)  # no native dimensions upstream: the reduce policy applies
    assert "dimensions" not in fake.requests[-1].body
    fake.fail_next("status", status=400)
    embed(client, input=["m2"])
    after = admin_metrics(client)
    assert after["requests"] == before["requests"] + 2
    rejected = "upstream_rejected_request"
    assert after["requests_by_outcome"][rejected] == before["requests_by_outcome"].get(rejected, 0) + 1
    assert after["provider_failures"] == before["provider_failures"] + 1
    assert after["dimension_adjustments"] == before["dimension_adjustments"] + 1
    assert after["cache_misses"] == before["cache_misses"] + 1  # the failed call records no cache result
    assert {"fallbacks", "policy_denials", "cache_hits", "cache"} <= set(after)
    text = client.get("/metrics", headers=NO_KEY).text
    for name in ("embeddings_cache_hits_total", "embeddings_fallbacks_total", "embeddings_circuit_breaker_state"):
        assert f"# TYPE {name.removesuffix('_total')}" in text
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(samples["embeddings_cache_misses_total"]) == after["cache_misses"]
    assert float(samples["embeddings_cache_hits_total"]) == after["cache_hits"]
    assert OPENAI_KEY not in text and LOCAL_KEY not in text


# --- model admin routes ----------------------------------------------------------------------------
def test_warmup_and_download_routes(client: TestClient, fake: FakeOpenAIServer, data: Path) -> None:
    body = {"model": f"huggingface:{MODEL}"}
    assert_openai_error(client.post("/api/v1/embeddings/models/warmup", json=body, headers=USER), 403)
    assert_openai_error(client.post("/api/v1/embeddings/models/warmup", json=body, headers=NO_KEY), 401)
    warm = client.post("/api/v1/embeddings/models/warmup", json=body)
    assert warm.status_code == 200 and warm.json()["status"] == "ready"
    assert f"huggingface:{MODEL}" in client.get("/api/v1/embeddings/health").json()["loaded_models"]

    onnx = {"model": f"onnx:{MODEL}@fp32"}
    graphs = data / "models" / "onnx" / "sentence-transformers--all-MiniLM-L6-v2"   # <revision>/model.fp32.onnx
    assert not list(graphs.rglob("model.fp32.onnx"))
    assert_openai_error(client.post("/api/v1/embeddings/models/download", json=onnx, headers=USER), 403)
    downloaded = client.post("/api/v1/embeddings/models/download", json=onnx)
    assert downloaded.status_code == 200, downloaded.text
    assert downloaded.json()["provider"] == "onnx" and downloaded.json()["status"] == "downloaded"
    assert list(graphs.rglob("model.fp32.onnx"))  # exported locally from the bundled weights
    missing = client.post("/api/v1/embeddings/models/download", json={"model": "onnx:nobody/no-such-model"})
    assert_openai_error(missing, 404, "model_not_found")
    assert_openai_error(client.post("/api/v1/embeddings/models/warmup", json={"model": "nobody/nope"}), 404)
    assert fake.requests == []
