"""Pure request logic of the embeddings path: input normalisation, token limits, vector checks,
the dimension policy, L2 normalisation and OpenAI's base64 encoding.

No I/O and no model here: every function takes plain values and raises domain errors, so each is
unit- and property-tested without a server.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tldw_Server_API.app.core.errors import InputTooLong, InvalidInput, PayloadTooLarge, ProviderError

TokenIds = list[int]
InputItem = str | TokenIds
DimensionPolicy = Literal["reduce", "pad", "ignore"]

_SHAPE_MESSAGE = (
    "'input' must be a string, an array of strings, an array of token ids, or an array of token-id arrays"
)


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_token_array(ids: list[Any], param: str) -> TokenIds:
    if not ids:
        raise InvalidInput(f"'{param}' must not be an empty token array", param=param)
    for j, token in enumerate(ids):
        if not _is_token_id(token):
            raise InvalidInput(f"'{param}[{j}]' must be an integer token id", param=f"{param}[{j}]")
    return ids


def normalize_input(raw: Any, *, max_inputs: int) -> list[InputItem]:
    """OpenAI's four input shapes -> a non-empty list of non-empty strings or token-id arrays."""
    if raw is None:
        raise InvalidInput("'input' is required", param="input", code="missing_required_parameter")
    if isinstance(raw, str):
        if not raw:
            raise InvalidInput("'input' must not be an empty string", param="input")
        return [raw]
    if not isinstance(raw, list):
        raise InvalidInput(_SHAPE_MESSAGE, param="input")
    if not raw:
        raise InvalidInput("'input' must not be an empty array", param="input")
    if len(raw) > max_inputs:
        raise InvalidInput(f"'input' has {len(raw)} items; at most {max_inputs} are allowed", param="input")
    if _is_token_id(raw[0]):  # one flat token array; a bad element is named by its own index
        return [_check_token_array(raw, "input")]
    items: list[InputItem] = []
    first_kind = type(raw[0])
    for i, item in enumerate(raw):
        param = f"input[{i}]"
        if isinstance(item, str) and first_kind is str:
            if not item:
                raise InvalidInput(f"'{param}' must not be an empty string", param=param)
            items.append(item)
        elif isinstance(item, list) and first_kind is list:
            items.append(_check_token_array(item, param))
        else:
            raise InvalidInput(f"{_SHAPE_MESSAGE}; '{param}' does not match", param=param)
    return items


def check_token_limits(
    counts: Sequence[int], *, max_tokens: int | None, truncate: bool, max_total: int
) -> list[int]:
    """Validate per-input and per-request token counts; return the counts the model will see."""
    effective = list(counts)
    if max_tokens is not None:
        for i, count in enumerate(counts):
            if count > max_tokens:
                if not truncate:
                    raise InputTooLong(
                        f"'input[{i}]' has {count} tokens; the model accepts at most {max_tokens}. "
                        "Shorten it or send \"truncate\": true.",
                        param=f"input[{i}]",
                    )
                effective[i] = max_tokens
    total = sum(effective)
    if total > max_total:
        raise PayloadTooLarge(
            f"the request has {total} tokens; at most {max_total} are allowed per request", param="input"
        )
    return effective


def index_ranges(indexes: Sequence[int]) -> str:
    """Sorted indexes as compact ranges for a header: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    parts: list[str] = []
    ordered = sorted(set(indexes))
    start = 0
    for k in range(1, len(ordered) + 1):
        if k == len(ordered) or ordered[k] != ordered[k - 1] + 1:
            first, last = ordered[start], ordered[k - 1]
            parts.append(str(first) if first == last else f"{first}-{last}")
            start = k
    return ",".join(parts)


def pool_pieces(vectors: Sequence[np.ndarray], groups: Sequence[range], weights: Sequence[int]) -> list[np.ndarray]:
    """One vector per group of consecutive piece vectors: their mean weighted by each piece's token
    count, L2-normalised (the `mean` long-input mode: every part of a long text counts)."""
    pooled = []
    for group in groups:
        rows = np.stack([vectors[i] for i in group]).astype(np.float32, copy=False)
        w = np.asarray([weights[i] for i in group], dtype=np.float32)
        mean = (rows * w[:, None]).sum(axis=0, keepdims=True) / max(float(w.sum()), 1.0)
        pooled.append(l2_normalize(mean)[0])
    return pooled


def validate_vectors(vectors: Any, *, expected_rows: int, expected_dim: int | None) -> np.ndarray:
    """A provider's output must be a finite float matrix of the right shape, else ProviderError."""
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ProviderError("the provider returned vectors that are not numeric") from exc
    if array.ndim != 2 or array.shape[0] != expected_rows:
        raise ProviderError(f"the provider returned {array.shape[0] if array.ndim else 0} vectors "
                            f"for {expected_rows} inputs")
    if expected_dim is not None and array.shape[1] != expected_dim:
        raise ProviderError(f"the provider returned vectors of width {array.shape[1]}, expected {expected_dim}")
    if array.shape[1] == 0 or not np.isfinite(array).all():
        raise ProviderError("the provider returned empty or non-finite vectors")
    return array


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Unit rows; an all-zero row stays zero rather than becoming NaN."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32, copy=False)


def check_dimensions(requested: int | None, *, native: int, policy: DimensionPolicy) -> None:
    """Reject a `dimensions` value the policy cannot honour, before any model work is done."""
    if requested is None:
        return
    if requested <= 0:
        raise InvalidInput("'dimensions' must be a positive integer", param="dimensions")
    if policy == "reduce" and requested > native:
        raise InvalidInput(
            f"'dimensions' is {requested} but the model's vectors have {native}; "
            "the server's dimension policy 'reduce' cannot enlarge them",
            param="dimensions",
        )


def apply_dimensions(
    vectors: np.ndarray, requested: int | None, *, policy: DimensionPolicy
) -> tuple[np.ndarray, bool]:
    """Shape unit vectors to `requested` columns: reduce = keep the first N then re-normalise
    (Matryoshka); pad = zero-pad when wider, reduce when narrower; ignore = native width.
    Returns the vectors and whether they were changed."""
    native = vectors.shape[1]
    check_dimensions(requested, native=native, policy=policy)
    if requested is None or requested == native or policy == "ignore":
        return vectors, False
    if requested < native:
        return l2_normalize(np.ascontiguousarray(vectors[:, :requested])), True
    padded = np.zeros((vectors.shape[0], requested), dtype=np.float32)
    padded[:, :native] = vectors
    return padded, True


def encode_base64(vector: np.ndarray) -> str:
    """OpenAI's base64 format: the little-endian float32 bytes of the vector."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_base64(data: str) -> np.ndarray:
    """Inverse of `encode_base64` (used for upstream providers and tests)."""
    return np.frombuffer(base64.b64decode(data), dtype="<f4")


@dataclass(frozen=True)
class ParsedModel:
    provider: str | None
    model_id: str


MAX_MODEL_NAME_CHARS = 256   # hub ids are at most 96 + 1 + 96; local paths get room to spare


def parse_model_name(model: str) -> ParsedModel:
    """`provider:model` -> both parts; a bare id leaves the provider to the catalog. The one rule
    for model names, whichever field they came in: non-empty, at most `MAX_MODEL_NAME_CHARS`, and
    no control characters (a name ends up in file paths and cache keys)."""
    name = model.strip()
    if not name:
        raise InvalidInput("'model' must not be empty", param="model")
    if len(name) > MAX_MODEL_NAME_CHARS:
        raise InvalidInput(f"'model' is {len(name)} characters long; model names have at most "
                           f"{MAX_MODEL_NAME_CHARS}", param="model")
    if not name.isprintable():
        raise InvalidInput("'model' must not contain control characters", param="model")
    head, sep, tail = name.partition(":")
    if sep and head and tail and head.replace("_", "").replace("-", "").isalnum() and "/" not in head:
        return ParsedModel(provider=head.lower().replace("-", "_"), model_id=tail.strip())
    return ParsedModel(provider=None, model_id=name)
