"""HTTP contract of /api/v1/embeddings through the real app (TestClient, lifespan run, real model)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import (
    ADMIN_KEY,
    DEFAULT_MODEL_ID,
    MODEL,
    assert_openai_error,
    cosine_rows,
    make_settings,
)

from tldw_Server_API.app.main import create_app

TEXTS = ["The cat sat on the mat.", "Quantum chromodynamics describes the strong force.", "hello"]


def embed(client: TestClient, **payload: Any) -> Any:
    payload.setdefault("model", MODEL)
    return client.post("/api/v1/embeddings", json=payload)


def test_float_response_shape_and_numbers(app_client: TestClient, reference: Any) -> None:
    response = embed(app_client, input=TEXTS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert [row["index"] for row in body["data"]] == [0, 1, 2]
    assert all(row["object"] == "embedding" for row in body["data"])
    vectors = np.array([row["embedding"] for row in body["data"]], dtype=np.float32)
    assert vectors.shape == (3, 384)
    assert cosine_rows(vectors, reference(TEXTS)).min() >= 0.9999
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0
    # A bare id runs on the engine the server chose for it (unmeasured here: the rule, onnx fp32)
    # and the response names it; `huggingface:` pins torch.
    choice = app_client.get("/api/v1/embeddings/health").json()["engine_choice"]["models"][MODEL]
    assert choice["how"] == "rule" and choice["engine"] == "onnx:fp32"
    assert response.headers["x-embeddings-provider"] == "onnx"
    assert response.headers["x-embeddings-engine"] == "onnx:fp32"
    pinned = embed(app_client, model=f"huggingface:{MODEL}", input=TEXTS)
    assert pinned.headers["x-embeddings-engine"] == "huggingface:fp32"
    assert pinned.json()["model"] == f"huggingface:{MODEL}"
    pinned_vectors = np.array([row["embedding"] for row in pinned.json()["data"]], dtype=np.float32)
    assert cosine_rows(vectors, pinned_vectors).min() >= 0.9999     # the same vectors either way
    assert response.headers["x-request-id"]


def test_usage_counts_model_tokens(app_client: TestClient, st_model: Any) -> None:
    expected = sum(len(ids) for ids in st_model.tokenizer(TEXTS)["input_ids"])
    assert embed(app_client, input=TEXTS).json()["usage"]["prompt_tokens"] == expected


def test_base64_carries_the_same_numbers_as_float(app_client: TestClient) -> None:
    floats = embed(app_client, input=TEXTS).json()["data"]
    b64 = embed(app_client, input=TEXTS, encoding_format="base64").json()["data"]
    for f_row, b_row in zip(floats, b64, strict=True):
        decoded = np.frombuffer(base64.b64decode(b_row["embedding"]), dtype="<f4")
        assert np.array_equal(decoded, np.array(f_row["embedding"], dtype=np.float32))


def test_provider_prefix_and_single_string(app_client: TestClient, reference: Any) -> None:
    response = embed(app_client, input="hello", model=f"huggingface:{MODEL}")
    assert response.status_code == 200
    assert response.json()["model"] == f"huggingface:{MODEL}"
    assert cosine_rows(np.array([response.json()["data"][0]["embedding"]]), reference(["hello"]))[0] >= 0.9999


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_dimensions_reduce_is_matryoshka(app_client: TestClient, reference: Any, encoding: str) -> None:
    row = embed(app_client, input=["hello"], dimensions=128, encoding_format=encoding).json()["data"][0]["embedding"]
    vec = np.frombuffer(base64.b64decode(row), dtype="<f4") if encoding == "base64" else np.array(row)
    full = reference(["hello"])[0][:128]
    assert vec.shape == (128,)
    assert abs(np.linalg.norm(vec) - 1) < 1e-5
    assert cosine_rows(vec[None, :], full[None, :])[0] >= 0.9999


def test_token_array_inputs_match_strings(app_client: TestClient, tiktoken_dir: Path) -> None:
    from tldw_Server_API.app.core.Embeddings.tokenization import TokenArrayDecoder

    ids = [TokenArrayDecoder(tiktoken_dir).encode(text) for text in TEXTS]
    as_tokens = embed(app_client, input=ids).json()["data"]
    as_text = embed(app_client, input=TEXTS).json()["data"]
    single = embed(app_client, input=ids[0]).json()["data"]
    assert np.allclose([r["embedding"] for r in as_tokens], [r["embedding"] for r in as_text], atol=1e-6)
    assert np.allclose(single[0]["embedding"], as_text[0]["embedding"], atol=1e-6)


LONG = "word " * 400  # ~402 tokens, over MiniLM's 256


def test_truncate_false_refuses_a_too_long_input_naming_its_index(app_client: TestClient) -> None:
    error = assert_openai_error(embed(app_client, input=["short", LONG], truncate=False), 400, "input_too_long")
    assert error["param"] == "input[1]" and "input[1]" in error["message"]


def test_long_inputs_are_truncated_by_default_and_the_header_says_which(app_client: TestClient) -> None:
    response = embed(app_client, input=["short", LONG, "also short", LONG, LONG])
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] <= 3 * 256 + 10
    assert response.headers["X-Embeddings-Truncated"] == "3"
    assert response.headers["X-Embeddings-Truncated-Inputs"] == "1,3-4"
    fits = embed(app_client, input=["short"])
    assert fits.headers["X-Embeddings-Truncated"] == "0" and "X-Embeddings-Truncated-Inputs" not in fits.headers


def test_server_truncate_setting_and_token_cap(tmp_path: Path, tiktoken_dir: Path) -> None:
    settings = make_settings(tmp_path, tiktoken_dir, embeddings_truncate=False, embeddings_max_tokens_per_request=300)
    with TestClient(create_app(settings), headers={"X-API-KEY": ADMIN_KEY}) as client:
        assert_openai_error(embed(client, input=[LONG]), 400, "input_too_long")
        assert embed(client, input=[LONG], truncate=True).status_code == 200
        assert_openai_error(embed(client, input=[LONG, LONG], truncate=True), 413, "request_too_large")
        assert embed(client, input="still serving").status_code == 200


def test_dimension_policies(tmp_path: Path, tiktoken_dir: Path) -> None:
    for policy, width in (("pad", 512), ("ignore", 384)):
        settings = make_settings(tmp_path / policy, tiktoken_dir, embeddings_dimension_policy=policy)
        with TestClient(create_app(settings), headers={"X-API-KEY": ADMIN_KEY}) as client:
            vec = np.array(embed(client, input="x", dimensions=512).json()["data"][0]["embedding"])
            assert vec.shape == (width,) and abs(np.linalg.norm(vec) - 1) < 1e-5


BAD_BODIES: list[tuple[str, Any, int, str | None]] = [
    ("missing input", {"model": MODEL}, 400, "input"),
    ("empty string", {"model": MODEL, "input": ""}, 400, "input"),
    ("empty list", {"model": MODEL, "input": []}, 400, "input"),
    ("list with empty string", {"model": MODEL, "input": ["a", ""]}, 400, "input[1]"),
    ("null input", {"model": MODEL, "input": None}, 400, "input"),
    ("number", {"model": MODEL, "input": 3.5}, 400, "input"),
    ("dict", {"model": MODEL, "input": {"text": "a"}}, 400, "input"),
    ("bool", {"model": MODEL, "input": True}, 400, "input"),
    ("mixed list", {"model": MODEL, "input": ["a", 1]}, 400, "input[1]"),
    ("mixed token lists", {"model": MODEL, "input": [[1, 2], "a"]}, 400, "input[1]"),
    ("bool in token array", {"model": MODEL, "input": [[1, True]]}, 400, "input[0][1]"),
    ("too many inputs", {"model": MODEL, "input": ["a"] * 2049}, 400, "input"),
    ("negative token id", {"model": MODEL, "input": [[15339, -1]]}, 400, "input[0][1]"),
    ("huge token id", {"model": MODEL, "input": [10**12]}, 400, "input[0][0]"),
    ("empty token array", {"model": MODEL, "input": [[]]}, 400, "input[0]"),
    ("missing model", {"input": "a"}, 400, "model"),
    ("model not a string", {"input": "a", "model": 7}, 400, "model"),
    ("unknown provider", {"input": "a", "model": "nosuch:model"}, 400, "model"),
    ("bad encoding_format", {"model": MODEL, "input": "a", "encoding_format": "hex"}, 400, "encoding_format"),
    ("dimensions 0", {"model": MODEL, "input": "a", "dimensions": 0}, 400, "dimensions"),
    ("dimensions -1", {"model": MODEL, "input": "a", "dimensions": -1}, 400, "dimensions"),
    ("dimensions string", {"model": MODEL, "input": "a", "dimensions": "a"}, 400, "dimensions"),
    ("dimensions bool", {"model": MODEL, "input": "a", "dimensions": True}, 400, "dimensions"),
    ("dimensions too large", {"model": MODEL, "input": "a", "dimensions": 385}, 400, "dimensions"),
    ("body is a list", ["a"], 400, None),
]


@pytest.mark.parametrize(("case", "body", "status", "param"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_inputs_get_openai_errors(
    app_client: TestClient, case: str, body: Any, status: int, param: str | None
) -> None:
    error = assert_openai_error(app_client.post("/api/v1/embeddings", json=body), status)
    assert error["param"] == param, (case, error)
    assert embed(app_client, input="still serving").status_code == 200


def test_unknown_model_is_404(app_client: TestClient) -> None:
    assert_openai_error(embed(app_client, input="a", model="no-such/model"), 404, "model_not_found")


def test_known_but_unbuilt_provider_is_501(app_client: TestClient) -> None:
    assert_openai_error(embed(app_client, input="a", model="openai:text-embedding-3-small"), 501)


def test_unknown_extra_fields_are_ignored(app_client: TestClient) -> None:
    assert embed(app_client, input="a", frobnicate=True, user="user-42").status_code == 200


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe"])
def test_body_that_is_not_json(app_client: TestClient, raw: bytes) -> None:
    response = app_client.post("/api/v1/embeddings", content=raw, headers={"content-type": "application/json"})
    assert_openai_error(response, 400)


def test_20mb_body_is_413(app_client: TestClient) -> None:
    big = b'{"model": "m", "input": "' + b"a" * (20 * 1024 * 1024) + b'"}'
    response = app_client.post("/api/v1/embeddings", content=big, headers={"content-type": "application/json"})
    assert_openai_error(response, 413, "request_too_large")
    assert embed(app_client, input="still serving").status_code == 200


def test_streamed_body_without_length_is_413(app_client: TestClient) -> None:
    def chunks() -> Any:
        yield b'{"model": "m", "input": "'
        for _ in range(12):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    response = app_client.post("/api/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413, "request_too_large")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"X-API-KEY": "wrong"}, {"Authorization": "Basic " + ADMIN_KEY}],
)
def test_missing_or_wrong_key_is_401(app_client: TestClient, headers: dict[str, str]) -> None:
    response = app_client.post(
        "/api/v1/embeddings", json={"model": MODEL, "input": "a"}, headers={"Authorization": "", **headers}
    )
    assert_openai_error(response, 401, "invalid_api_key")
    assert ADMIN_KEY not in response.text


def test_x_api_key_header_works(app_client: TestClient) -> None:
    response = app_client.post(
        "/api/v1/embeddings", json={"model": MODEL, "input": "a"}, headers={"Authorization": "", "X-API-KEY": ADMIN_KEY}
    )
    assert response.status_code == 200


def test_models_list_and_get(app_client: TestClient) -> None:
    listing = app_client.get("/api/v1/embeddings/models").json()
    card = next(m for m in listing["data"] if m["id"] == MODEL)
    assert card["provider"] == "huggingface" and card["dimension"] == 384 and card["max_tokens"] == 256
    assert card["available"] is True
    defaults = [(m["provider"], m["id"]) for m in listing["data"] if m["default"]]
    assert defaults == [("huggingface", DEFAULT_MODEL_ID)]   # a bare default marks its catalog card
    one = app_client.get(f"/api/v1/embeddings/models/{MODEL}")
    assert one.status_code == 200 and one.json()["id"] == MODEL
    assert_openai_error(app_client.get("/api/v1/embeddings/models/nope/nope"), 404, "model_not_found")
    assert app_client.get("/api/v1/embeddings/models", headers={"Authorization": ""}).status_code == 401


def test_health_needs_no_key_and_lists_loaded_models(app_client: TestClient) -> None:
    embed(app_client, input="warm")
    response = app_client.get("/api/v1/embeddings/health", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json()["status"] == "healthy"
    assert f"huggingface:{MODEL}" in response.json()["loaded_models"]


def test_prometheus_metrics(app_client: TestClient) -> None:
    embed(app_client, input=["count me", "and me"])
    embed(app_client, input="", model=MODEL)
    text = app_client.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/api/v1/embeddings",status="200"}' in text
    assert 'http_requests_total{method="POST",route="/api/v1/embeddings",status="400"}' in text
    assert "http_request_duration_seconds_bucket" in text
    tokens = [line for line in text.splitlines() if line.startswith("embeddings_tokens_total{")]
    assert tokens and float(tokens[0].rsplit(" ", 1)[1]) > 0


def test_unknown_route_and_method_have_openai_shape(app_client: TestClient) -> None:
    assert_openai_error(app_client.get("/api/v1/nope"), 404)
    assert_openai_error(app_client.get("/api/v1/embeddings"), 405)


def test_unexpected_error_is_500_with_request_id_and_no_details(tmp_path: Path, tiktoken_dir: Path) -> None:
    app = create_app(make_settings(tmp_path, tiktoken_dir))

    async def boom() -> None:
        raise RuntimeError("secret-internal-detail")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "req-abc"})
        error = assert_openai_error(response, 500, "internal_error")
        assert "req-abc" in error["message"] and response.headers["x-request-id"] == "req-abc"
        assert "secret-internal-detail" not in response.text
        assert client.get("/api/v1/embeddings/health").status_code == 200


def test_request_log_line_has_fields_but_never_inputs_or_keys(app_client: TestClient) -> None:
    from loguru import logger

    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), format="{extra[request_id]} {message}",
                      level="INFO")
    try:
        secret_text = "zebra-unique-input-text"
        response = app_client.post("/api/v1/embeddings", json={"model": MODEL, "input": [secret_text, "two"],
                                                                "user": "end-user-7"},
                                   headers={"X-Request-ID": "log-test-1"})
        assert response.status_code == 200
        app_client.post("/api/v1/embeddings", json={"model": MODEL, "input": secret_text},
                        headers={"Authorization": "Bearer not-the-key-secret"})
    finally:
        logger.remove(sink)
    joined = "\n".join(lines)
    line = next(entry for entry in lines if entry.startswith("log-test-1"))
    tokens = response.json()["usage"]["prompt_tokens"]
    assert "POST /api/v1/embeddings 200" in line and "inputs=2" in line and f"tokens={tokens}" in line
    assert "user=single_user" in line and "end_user=end-user-7" in line and "ms" in line
    assert secret_text not in joined and ADMIN_KEY not in joined and "not-the-key-secret" not in joined


@pytest.mark.parametrize("model", [f"onnx:{MODEL}@fp32", f"{MODEL}@fp32"])
def test_onnx_provider_through_http(app_client: TestClient, reference: Any, model: str) -> None:
    response = embed(app_client, input=TEXTS, model=model)
    assert response.status_code == 200, response.text
    assert response.headers["x-embeddings-provider"] == "onnx" and response.json()["model"] == model
    vectors = np.array([row["embedding"] for row in response.json()["data"]], dtype=np.float32)
    assert cosine_rows(vectors, reference(TEXTS)).min() >= 0.9999


LIGHTHOUSE = ("The keeper of the northern lighthouse trimmed the wick every four hours through winter storms, "
              "polished the brass of the Fresnel lens and logged every passing steamer in the station book. ")
SOILS = ("Andisols form on volcanic ash; their allophane clays bind phosphate so tightly that farmers on the "
         "slopes of Etna must add more fertiliser, and the porous young soils hold water and organic carbon. ")


def vector_of(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array(response.json()["data"][0]["embedding"], dtype=np.float32)


def test_mean_mode_pools_the_whole_long_text(app_client: TestClient) -> None:
    text = LIGHTHOUSE * 9 + SOILS * 3          # ~400 tokens of lighthouse, then the soils the window never sees
    truncated = embed(app_client, input=[text])
    mean = embed(app_client, input=[text], long_input="mean")
    assert truncated.headers["X-Embeddings-Truncated"] == "1"
    assert mean.headers["X-Embeddings-Truncated"] == "0" and mean.headers["X-Embeddings-Pooled-Inputs"] == "0"
    query = vector_of(embed(app_client, input=["why do volcanic ash soils need more phosphate fertiliser"]))
    mean_vector, truncated_vector = vector_of(mean), vector_of(truncated)
    assert np.isclose(np.linalg.norm(mean_vector), 1.0, atol=1e-5)
    assert float(query @ mean_vector) > float(query @ truncated_vector) + 0.05
    assert mean.json()["usage"]["prompt_tokens"] > truncated.json()["usage"]["prompt_tokens"]
    short = embed(app_client, input=["short text"], long_input="mean")   # what fits is embedded as it is
    assert np.allclose(vector_of(short), vector_of(embed(app_client, input=["short text"])), atol=1e-6)
    assert "X-Embeddings-Pooled" not in short.headers


def test_long_input_mode_is_validated(app_client: TestClient) -> None:
    assert_openai_error(embed(app_client, input=["a"], long_input="median"), 400, param="long_input")
