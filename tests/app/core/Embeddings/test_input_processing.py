"""Pure request logic of the embeddings path: input shapes, token limits, vector checks,
the dimension policy, base64 encoding and model-name parsing."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tldw_Server_API.app.core.Embeddings.input_processing import (
    apply_dimensions,
    check_token_limits,
    decode_base64,
    encode_base64,
    index_ranges,
    l2_normalize,
    normalize_input,
    parse_model_name,
    pool_pieces,
    validate_vectors,
)
from tldw_Server_API.app.core.errors import InputTooLong, InvalidInput, PayloadTooLarge, ProviderError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("hello", ["hello"]),
        (["a", "b c"], ["a", "b c"]),
        ([1, 2, 3], [[1, 2, 3]]),
        ([[1, 2], [3]], [[1, 2], [3]]),
        ([0], [[0]]),
    ],
    ids=["string", "strings", "token-array", "token-arrays", "single-token"],
)
def test_normalize_input_accepts_the_four_openai_shapes(raw: Any, expected: list[Any]) -> None:
    assert normalize_input(raw, max_inputs=2048) == expected


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (None, "input"),
        ("", "input"),
        ([], "input"),
        ([""], "input[0]"),
        (["a", "b", ""], "input[2]"),
        (3, "input"),
        (1.5, "input"),
        ({"text": "a"}, "input"),
        (True, "input"),
        ([True], "input[0]"),
        ([[1, True]], "input[0][1]"),
        ([[1, 2], [3, "x"]], "input[1][1]"),
        (["a", [1, 2]], "input[1]"),
        ([[1, 2], "a"], "input[1]"),
        (["a", "b", 7], "input[2]"),
        ([[]], "input[0]"),
        ([[1], []], "input[1]"),
        ([None], "input[0]"),
        (["a"] * 2049, "input"),
    ],
)
def test_normalize_input_rejects_bad_shapes(raw: Any, param: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_input(raw, max_inputs=2048)
    assert info.value.param == param


def test_normalize_input_missing_code_and_inclusive_max() -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_input(None, max_inputs=1)
    assert info.value.code == "missing_required_parameter"
    assert len(normalize_input(["a"] * 2048, max_inputs=2048)) == 2048
    with pytest.raises(InvalidInput, match="2049"):
        normalize_input(["a"] * 2049, max_inputs=2048)


@pytest.mark.parametrize(("raw", "param"), [([1, 2, True], "input[2]"), ([1, "a"], "input[1]")])
def test_normalize_input_flat_token_array_names_the_bad_index(raw: list[Any], param: str) -> None:
    with pytest.raises(InvalidInput) as info:
        normalize_input(raw, max_inputs=2048)
    assert info.value.param == param


@given(st.lists(st.text(min_size=1), min_size=1, max_size=50))
def test_normalize_input_returns_non_empty_strings_unchanged(texts: list[str]) -> None:
    assert normalize_input(texts, max_inputs=50) == texts


def test_token_limits_pass_through_when_within_limits() -> None:
    assert check_token_limits([3, 5], max_tokens=5, truncate=False, max_total=8) == [3, 5]
    assert check_token_limits([10**6], max_tokens=None, truncate=False, max_total=10**6) == [10**6]


def test_token_limits_reject_an_input_over_the_model_limit_by_index() -> None:
    with pytest.raises(InputTooLong) as info:
        check_token_limits([1, 2, 9], max_tokens=8, truncate=False, max_total=100)
    assert info.value.param == "input[2]"
    assert info.value.code == "input_too_long"


def test_token_limits_truncate_clamps_to_the_model_limit() -> None:
    assert check_token_limits([1, 9, 20], max_tokens=8, truncate=True, max_total=100) == [1, 8, 8]


@pytest.mark.parametrize(("counts", "truncate"), [([5, 6], False), ([50, 50], True)])
def test_token_limits_reject_a_request_over_the_total(counts: list[int], truncate: bool) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        check_token_limits(counts, max_tokens=8 if truncate else None, truncate=truncate, max_total=10)
    assert info.value.param == "input"


def test_validate_vectors_returns_a_float32_matrix() -> None:
    out = validate_vectors([[1, 2], [3, 4]], expected_rows=2, expected_dim=2)
    assert out.dtype == np.float32
    assert out.tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("vectors", "rows", "dim"),
    [
        ([[1.0, 2.0]], 2, None),
        ([[1.0, 2.0], [3.0, 4.0]], 1, None),
        ([1.0, 2.0], 2, None),
        ([[1.0, 2.0], [3.0, 4.0]], 2, 3),
        ([[1.0, math.nan]], 1, None),
        ([[1.0, math.inf]], 1, None),
        ([[-math.inf, 0.0]], 1, None),
        ([["a", "b"]], 1, None),
        ([[1.0, 2.0], [3.0]], 2, None),
        ({"x": 1}, 1, None),
        ([[]], 1, None),
    ],
    ids=["too-few-rows", "too-many-rows", "1-d", "wrong-width", "nan", "inf", "-inf", "strings", "ragged",
         "dict", "zero-width"],
)
def test_validate_vectors_rejects_unusable_output(vectors: Any, rows: int, dim: int | None) -> None:
    with pytest.raises(ProviderError):
        validate_vectors(vectors, expected_rows=rows, expected_dim=dim)


UNIT = l2_normalize(np.array([[3.0, 4.0, 0.0, 12.0], [1.0, 1.0, 1.0, 1.0]], dtype=np.float32))


def test_reduce_keeps_the_first_columns_and_renormalises() -> None:
    out, changed = apply_dimensions(UNIT, 2, policy="reduce")
    assert changed
    np.testing.assert_allclose(out, [[0.6, 0.8], [math.sqrt(0.5), math.sqrt(0.5)]], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def test_pad_zero_pads_and_keeps_unit_norm() -> None:
    out, changed = apply_dimensions(UNIT, 6, policy="pad")
    assert changed and out.shape == (2, 6)
    np.testing.assert_array_equal(out[:, :4], UNIT)
    np.testing.assert_array_equal(out[:, 4:], 0.0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)


def test_pad_policy_reduces_when_narrower() -> None:
    out, changed = apply_dimensions(UNIT, 2, policy="pad")
    assert changed
    np.testing.assert_allclose(out, apply_dimensions(UNIT, 2, policy="reduce")[0])


@pytest.mark.parametrize(("requested", "policy"), [(2, "ignore"), (9, "ignore"), (None, "reduce"), (4, "reduce"),
                                                   (4, "pad")])
def test_native_width_is_returned_unchanged(requested: int | None, policy: Any) -> None:
    out, changed = apply_dimensions(UNIT, requested, policy=policy)
    assert not changed
    np.testing.assert_array_equal(out, UNIT)


@pytest.mark.parametrize(("requested", "policy"), [(5, "reduce"), (0, "reduce"), (-1, "reduce"), (0, "pad"),
                                                   (-1, "ignore")])
def test_dimensions_the_policy_cannot_honour_are_rejected(requested: int, policy: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        apply_dimensions(UNIT, requested, policy=policy)
    assert info.value.param == "dimensions"


@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(2, 16)),
               elements=st.floats(-100, 100, width=32, allow_subnormal=False)),
    st.data(),
)
def test_reduce_gives_unit_rows_equal_to_normalised_prefix(vectors: np.ndarray, data: st.DataObject) -> None:
    k = data.draw(st.integers(1, vectors.shape[1] - 1))
    assume(bool((np.linalg.norm(vectors[:, :k].astype(np.float64), axis=1) > 1e-3).all()))
    unit = l2_normalize(vectors)
    out, changed = apply_dimensions(unit, k, policy="reduce")
    assert changed and out.shape == (vectors.shape[0], k)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out, l2_normalize(unit[:, :k]), rtol=1e-6, atol=1e-7)


def test_l2_normalize_keeps_zero_rows_zero() -> None:
    out = l2_normalize(np.array([[0.0, 0.0], [0.0, 2.0]], dtype=np.float32))
    assert out.tolist() == [[0.0, 0.0], [0.0, 1.0]]


def test_base64_matches_openais_little_endian_float32_format() -> None:
    values = [0.1, -2.5, 3.0e-8, 1.0e30, 0.0]
    expected = base64.b64encode(struct.pack("<" + "f" * len(values), *values)).decode("ascii")
    assert encode_base64(np.array(values, dtype=np.float32)) == expected
    assert encode_base64(np.array(values, dtype=np.float64)) == expected
    assert encode_base64(np.array(values, dtype=">f4")) == expected
    assert decode_base64(expected).tolist() == list(struct.unpack("<" + "f" * len(values),
                                                                  base64.b64decode(expected)))


@given(hnp.arrays(np.float32, st.integers(0, 64), elements=st.floats(width=32, allow_nan=False)))
def test_base64_round_trip_is_exact(vector: np.ndarray) -> None:
    decoded = decode_base64(encode_base64(vector))
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, vector)
    assert decoded.tobytes() == vector.astype("<f4").tobytes()


@pytest.mark.parametrize(
    ("name", "provider", "model_id"),
    [
        ("huggingface:org/name", "huggingface", "org/name"),
        ("org/name", None, "org/name"),
        ("local-api:x", "local_api", "x"),
        ("OpenAI:text-embedding-3-small", "openai", "text-embedding-3-small"),
        ("  huggingface:org/name  ", "huggingface", "org/name"),
        ("ollama:nomic-embed-text:latest", "ollama", "nomic-embed-text:latest"),
        ("org/name:v1", None, "org/name:v1"),
        ("huggingface:", None, "huggingface:"),
    ],
)
def test_parse_model_name(name: str, provider: str | None, model_id: str) -> None:
    parsed = parse_model_name(name)
    assert (parsed.provider, parsed.model_id) == (provider, model_id)


@pytest.mark.parametrize("name", ["", "   "])
def test_parse_model_name_rejects_empty(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_model_name(name)
    assert info.value.param == "model"


@pytest.mark.parametrize(("indexes", "text"), [([], ""), ([4], "4"), ([0, 1, 2, 5, 7, 8], "0-2,5,7-8"),
                                              ([3, 1, 2, 2], "1-3"), (list(range(2048)), "0-2047")])
def test_index_ranges_compact_sorted_indexes(indexes: list[int], text: str) -> None:
    assert index_ranges(indexes) == text


def test_pool_pieces_is_the_token_weighted_mean_renormalised() -> None:
    a, b, c = np.eye(3, dtype=np.float32)
    pooled = pool_pieces([a, b, c], [range(0, 1), range(1, 3)], [7, 1, 3])
    assert np.allclose(pooled[0], a)
    expected = (1 * b + 3 * c) / np.linalg.norm(1 * b + 3 * c)
    assert np.allclose(pooled[1], expected) and np.isclose(np.linalg.norm(pooled[1]), 1.0)
