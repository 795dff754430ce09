"""HTTP tests of the embeddings production layer, part two: policy (allow/deny lists, wildcards,
admin bypass, strict), rate limits (per user and global; cache hits are not charged), a fallback
chain to `local_api` (with the pinning header allowed, the model map, every hop failing), a disabled
cache and an unconfigured provider. Small apps over real fake OpenAI servers: no local model loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_openai import FakeOpenAIServer, expected_vector
from fastapi.testclient import TestClient
from support import ADMIN_KEY, assert_openai_error, make_settings, write_keys_file

from tldw_Server_API.app.main import create_app

SMALL = "openai:text-embedding-3-small"
WIDTHS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
ALICE_KEY, BOB_KEY = "user-key-alice-0123456789", "user-key-bob-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
BOB = {"Authorization": f"Bearer {BOB_KEY}"}


def embed(client: TestClient, headers: dict[str, str], **payload: Any) -> Any:
    payload.setdefault("model", SMALL)
    return client.post("/api/v1/embeddings", json=payload, headers=headers)


def vectors(response: Any) -> np.ndarray:
    return np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(widths=WIDTHS) as server:
        yield server


@pytest.fixture
def make_client(
    tmp_path: Path, tiktoken_dir: Path, fake: FakeOpenAIServer
) -> Iterator[Any]:
    """`make_client(**settings)` -> a started app on the fake (openai; no local_api URL), multi-user."""
    fake.reset()
    started: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        directory = tmp_path / f"app{len(started)}"
        directory.mkdir()
        values: dict[str, Any] = {
            "api_keys_file": write_keys_file(directory, {"alice": ALICE_KEY, "bob": BOB_KEY}),
            "openai_base_url": fake.base_url,
            "openai_api_key": "sk-test-key", "embeddings_retry_base_delay": 0.01,
            "embeddings_retry_max_delay": 0.05, "embeddings_max_retries": 0, "auto_download_models": False,
            **overrides,
        }
        client = TestClient(create_app(make_settings(directory, tiktoken_dir, **values)), headers=ADMIN)
        started.append(client.__enter__())
        return client

    yield make
    for client in started:
        client.__exit__(None, None, None)


def admin_metrics(client: TestClient) -> dict[str, Any]:
    return dict(client.get("/api/v1/embeddings/metrics").json())


# --- policy ----------------------------------------------------------------------------------------
def test_policy_lists_and_wildcards_for_users_admin_bypass(make_client: Any, fake: FakeOpenAIServer) -> None:
    client = make_client(embeddings_enforce_policy=True, embeddings_allowed_models="text-embedding-3-*",
                         embeddings_denied_models="text-embedding-3-large")
    denials = admin_metrics(client)["policy_denials"]
    assert embed(client, ALICE, input="allowed by wildcard").status_code == 200
    for model in ("openai:text-embedding-ada-002", "openai:text-embedding-3-large"):
        error = assert_openai_error(embed(client, ALICE, input="a", model=model), 403, "model_not_allowed")
        assert error["type"] == "permission_error"
    assert len(fake.requests) == 1  # denied before any upstream work
    admin = embed(client, ADMIN, input="admin bypass", model="openai:text-embedding-ada-002")
    assert admin.status_code == 200, admin.text
    assert admin_metrics(client)["policy_denials"] == denials + 2
    assert 'embeddings_policy_denials_total{provider="openai"} 2.0' in client.get("/metrics").text
    assert embed(client, ALICE, input="still serving").status_code == 200


def test_policy_also_filters_fallback_hops(make_client: Any, fake: FakeOpenAIServer) -> None:
    client = make_client(embeddings_enforce_policy=True, embeddings_allowed_providers="openai")
    fake.fail_next("500")
    response = embed(client, ALICE, input="no allowed fallback")  # huggingface is not allowed: skipped
    assert_openai_error(response, 503, "all_providers_failed")
    assert int(response.headers["Retry-After"]) >= 1
    assert embed(client, ALICE, input="still serving").status_code == 200


def test_strict_policy_applies_to_admins(make_client: Any, fake: FakeOpenAIServer) -> None:
    client = make_client(embeddings_enforce_policy=True, embeddings_enforce_policy_strict=True,
                         embeddings_denied_providers="open*")
    assert_openai_error(embed(client, ADMIN, input="a"), 403, "model_not_allowed")
    assert_openai_error(embed(client, ALICE, input="a"), 403, "model_not_allowed")
    assert fake.requests == []
    assert admin_metrics(client)["policy_denials"] == 2


# --- rate limits -----------------------------------------------------------------------------------
def test_per_user_rate_limit(make_client: Any, fake: FakeOpenAIServer) -> None:
    client = make_client(embeddings_tenant_rps=0.05, embeddings_tenant_burst=2)
    first = embed(client, ALICE, input="rl one")
    assert first.status_code == 200
    assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == ("2", "1")
    assert embed(client, ALICE, input="rl two").headers["X-RateLimit-Remaining"] == "0"
    limited = embed(client, ALICE, input="rl three")
    assert_openai_error(limited, 429, "rate_limit_exceeded")
    assert int(limited.headers["Retry-After"]) >= 1
    assert (limited.headers["X-RateLimit-Limit"], limited.headers["X-RateLimit-Remaining"]) == ("2", "0")
    assert len(fake.requests) == 2

    other = embed(client, BOB, input="rl three")  # bob has his own bucket
    assert other.status_code == 200 and other.headers["X-RateLimit-Remaining"] == "1"
    cached = embed(client, ALICE, input="rl one")  # answered from the cache: nothing to charge
    assert cached.status_code == 200 and cached.headers["X-Cache"] == "hit"
    assert "X-RateLimit-Limit" not in cached.headers
    assert_openai_error(embed(client, ALICE, input=["rl one", "rl four"]), 429)  # one miss: charged
    assert admin_metrics(client)["rate_limited"] == 2


def test_global_rate_limit_applies_to_everybody(make_client: Any, fake: FakeOpenAIServer) -> None:
    client = make_client(embeddings_rate_limit="on", embeddings_global_rps=0.05, embeddings_global_burst=2)
    assert embed(client, ALICE, input="g1").headers["X-RateLimit-Limit"] == "2"
    assert embed(client, BOB, input="g2").status_code == 200
    for headers in (ALICE, BOB, ADMIN):
        limited = embed(client, headers, input="g3")
        assert_openai_error(limited, 429, "rate_limit_exceeded")
        assert "Retry-After" in limited.headers
    assert len(fake.requests) == 2


# --- fallback chains -------------------------------------------------------------------------------
def test_chain_to_local_api_with_header_allowed_and_model_map(make_client: Any, fake: FakeOpenAIServer) -> None:
    with FakeOpenAIServer() as local:
        client = make_client(
            embeddings_local_api_url=local.base_url,
            embeddings_fallback_chain='{"openai": ["local_api"]}',
            embeddings_fallback_model_map='{"openai:text-embedding-3-small": {"local_api": "mapped-model"}}',
            embeddings_allow_fallback_with_header=True,
        )
        fake.fail_next("500")
        response = embed(client, {**ALICE, "x-provider": "openai"}, input=["chained a", "chained b"])
        assert response.status_code == 200, response.text
        assert response.headers["X-Embeddings-Provider"] == "local_api"
        assert response.headers["X-Embeddings-Fallback-From"] == "openai"
        assert [r.body["model"] for r in local.requests] == ["mapped-model"]
        assert np.allclose(vectors(response), [expected_vector(t, 8) for t in ("chained a", "chained b")])

        fake.fail_next("429", retry_after=7)  # longer than the retry max delay: handed on at once
        local.fail_next("500")
        failed = embed(client, ALICE, input="every hop fails")
        assert_openai_error(failed, 503, "all_providers_failed")
        assert failed.headers["Retry-After"] == "7"  # the upstream's hint is passed on
        assert len(fake.requests) == 2 and len(local.requests) == 2
        assert admin_metrics(client)["fallbacks"] == 3
        assert embed(client, ALICE, input="still serving").headers["X-Embeddings-Provider"] == "openai"


# --- cache off, unconfigured provider --------------------------------------------------------------
def test_disabled_cache_always_misses(make_client: Any, fake: FakeOpenAIServer) -> None:
    client = make_client(embeddings_cache_enabled=False)
    for _ in range(2):
        assert embed(client, ALICE, input="same text").headers["X-Cache"] == "miss"
    assert len(fake.requests) == 2
    assert client.get("/api/v1/embeddings/health").json()["cache"] == {"enabled": False}
    assert client.delete("/api/v1/embeddings/cache").json() == {"removed": 0}


def test_resetting_a_breaker_never_used_is_not_a_404(make_client: Any) -> None:
    client = make_client()
    reset = client.post("/api/v1/embeddings/circuit-breakers/openai/reset")
    assert reset.status_code == 200, reset.text
    assert reset.json()["breaker"]["state"] == "closed"
    assert_openai_error(client.post("/api/v1/embeddings/circuit-breakers/nosuch/reset"), 404, "provider_not_found")


def test_local_api_without_url_is_501(make_client: Any, fake: FakeOpenAIServer) -> None:
    client = make_client()
    error = assert_openai_error(embed(client, ALICE, input="a", model="local_api:any-model"), 501,
                                "provider_not_implemented")
    assert "EMBEDDINGS_LOCAL_API_URL" in error["message"]
    assert fake.requests == []
    assert embed(client, ALICE, input="still serving").status_code == 200
