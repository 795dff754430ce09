"""Property-based fuzzing of every route in the app's own OpenAPI schema (schemathesis), against a
live server with two callers, an admin and a plain user. For every generated request, valid or
not: no 5xx, every error in OpenAI's shape, and documented responses match their schema.

Examples per route: `FUZZ_EXAMPLES` (default 12, bounded for the test command); `make fuzz` /
`bench/fuzz.sh` runs the same test with a larger number.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, seed, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from support import ADMIN_KEY, LiveServer, make_settings, write_keys_file

from tldw_Server_API.app.main import create_app

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
USER_KEY = "fuzz-user-key-0123456789"
# The app's schema, taken from an app that is built but never started (no services, no model).
schema = schemathesis.openapi.from_dict(create_app(make_settings(Path("/nonexistent-fuzz"))).openapi())
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, tiktoken_dir: Path) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("fuzz")
    keys = write_keys_file(data, {"fuzzuser": USER_KEY}, {"fuzzadmin": ADMIN_KEY})
    with LiveServer(make_settings(data, tiktoken_dir, api_keys_file=keys, single_user_api_key=None)) as server:
        yield server


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def assert_openai_shaped(response: Any) -> None:
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"], body
    assert "Traceback" not in response.text


def _seeded(test: Any) -> Any:
    """FUZZ_SEED set: random examples from that seed (bench/fuzz.sh); unset: the same ones each run."""
    value = os.environ.get("FUZZ_SEED")
    return seed(int(value))(test) if value else test


@schema.parametrize()
@_seeded
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
          derandomize=os.environ.get("FUZZ_SEED") is None)
def test_no_route_answers_5xx_or_an_unshaped_error(case: Any, fuzz_server: LiveServer,
                                                   http: requests.Session) -> None:
    for key in (ADMIN_KEY, USER_KEY):
        response = case.call(base_url=fuzz_server.base_url, session=http,
                             headers={"Authorization": f"Bearer {key}"}, timeout=60)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        assert_openai_shaped(response)
