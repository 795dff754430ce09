"""The `VectorStore` protocol every adapter implements, its result types, and the pure input checks
the adapters share (collection names, ids, vectors, metadata, top_k, paging).

Imports numpy, core errors and the filter module only; no database client. Methods of a store are
synchronous and may block on I/O: the API layer calls them in a worker thread, never on the loop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tldw_Server_API.app.core.errors import InvalidInput
from tldw_Server_API.app.core.RAG.vector_stores.filters import validate_field_name
from tldw_Server_API.app.core.wire import fits_int64

COLLECTION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,126}[A-Za-z0-9]$")
MAX_ID_LENGTH = 256
MAX_TOP_K = 1000
MAX_DIMENSION = 16000  # pgvector's limit for the vector type
METRICS = ("cosine",)

Metadata = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class VectorHit:
    """One query result; `score` is the cosine similarity (1 best, -1 worst)."""

    id: str
    score: float
    document: str
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class VectorRecord:
    """One stored record; `vector` only when the caller asked for vectors."""

    id: str
    document: str
    metadata: Metadata = field(default_factory=dict)
    vector: list[float] | None = None


@runtime_checkable
class VectorStore(Protocol):
    """One user's collections. Names are per user: two users' stores never see each other's.

    Reads of a missing collection (`query`, `get`, `count`) return nothing; deletes are no-ops;
    `upsert` needs `ensure_collection` first (else `NotFound`). Wrong input raises `InvalidInput`,
    an unreachable backend `ServiceUnavailable`. `where` is the language of `filters.parse_where`.
    """

    def ensure_collection(self, name: str, dimension: int, metric: str = "cosine") -> None:
        """Create the collection, or check that the existing one has this dimension."""

    def upsert(self, name: str, ids: Sequence[str], vectors: Any,
               documents: Sequence[str] | None = None,
               metadatas: Sequence[Mapping[str, Any] | None] | None = None) -> None:
        """Insert or replace (vector, document and metadata together) records by id."""

    def query(self, name: str, vector: Any, top_k: int,
              where: Mapping[str, Any] | None = None) -> list[VectorHit]:
        """Nearest records by cosine similarity, best first."""

    def get(self, name: str, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None,
            limit: int | None = None, offset: int = 0, include_vectors: bool = False) -> list[VectorRecord]:
        """Records by id (in the order asked) and/or filter (in insertion order), then paged."""

    def delete(self, name: str, ids: Sequence[str]) -> int:
        """Delete records by id; returns how many existed."""

    def delete_where(self, name: str, where: Mapping[str, Any]) -> int:
        """Delete the records matching a non-empty filter; returns how many."""

    def count(self, name: str, where: Mapping[str, Any] | None = None) -> int: ...

    def delete_collection(self, name: str) -> bool:
        """Drop the collection; False when it did not exist."""

    def list_collections(self) -> list[str]:
        """This user's collection names, sorted."""

    def close(self) -> None:
        """Release what this store owns (stores handed out by a factory own nothing)."""


# --- pure input checks --------------------------------------------------------------------------

def validate_collection_name(name: object) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME_RE.match(name):
        raise InvalidInput(
            "collection names are 3-128 characters of letters, digits, '_' and '-', "
            "starting and ending with a letter or digit", param="collection")
    return name


def validate_dimension(dimension: object, metric: str = "cosine") -> int:
    if metric not in METRICS:
        raise InvalidInput(f"unsupported metric {metric!r}: only {', '.join(METRICS)}", param="metric")
    if isinstance(dimension, bool) or not isinstance(dimension, int) or not 1 <= dimension <= MAX_DIMENSION:
        raise InvalidInput(f"dimension must be an integer in 1..{MAX_DIMENSION}", param="dimension")
    return dimension


def validate_ids(ids: object, *, unique: bool = True) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, Sequence):
        raise InvalidInput("ids must be a list of strings", param="ids")
    out = list(ids)
    for item in out:
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_ID_LENGTH:
            raise InvalidInput(f"each id is a string of 1-{MAX_ID_LENGTH} characters", param="ids")
    if unique and len(set(out)) != len(out):
        raise InvalidInput("ids must be unique within one call", param="ids")
    return out


def as_matrix(vectors: Any, rows: int, dimension: int | None) -> np.ndarray:
    """Vectors as a finite float32 (rows, dimension) array with no zero rows (cosine needs a norm)."""
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInput("vectors must be a list of equal-length lists of numbers", param="vectors") from None
    if matrix.ndim != 2 or matrix.shape[0] != rows:
        raise InvalidInput(f"expected {rows} vectors, one per id", param="vectors")
    if dimension is not None and matrix.shape[1] != dimension:
        raise InvalidInput(f"vector width {matrix.shape[1]} does not match the collection's dimension {dimension}",
                           param="vectors", code="dimension_mismatch")
    if not np.isfinite(matrix).all():
        raise InvalidInput("vectors must contain finite numbers only", param="vectors")
    if (np.linalg.norm(matrix, axis=1) == 0).any():
        raise InvalidInput("zero vectors have no cosine similarity", param="vectors")
    return matrix


def as_query_vector(vector: Any, dimension: int | None) -> np.ndarray:
    matrix = as_matrix([vector] if not isinstance(vector, np.ndarray) or vector.ndim == 1 else vector, 1, dimension)
    return matrix[0]


def clean_metadata(metadata: Mapping[str, Any] | None) -> Metadata:
    """Scalar metadata with valid keys; None values are dropped (absent and null mean the same)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidInput("each metadata is an object", param="metadatas")
    out: Metadata = {}
    for key, value in metadata.items():
        validate_field_name(key)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInput(f"metadata {key!r} must be finite", param="metadatas")
        if isinstance(value, int) and not fits_int64(value):
            raise InvalidInput(f"metadata {key!r} must fit in a 64-bit integer", param="metadatas")
        if not isinstance(value, (str, int, float, bool)):
            raise InvalidInput(f"metadata {key!r} must be a string, number or boolean", param="metadatas")
        out[key] = value
    return out


def prepare_upsert(ids: Sequence[str], vectors: Any, documents: Sequence[str] | None,
                   metadatas: Sequence[Mapping[str, Any] | None] | None,
                   dimension: int | None) -> tuple[list[str], np.ndarray, list[str], list[Metadata]]:
    """Validate one upsert batch; documents default to "" and metadatas to {}."""
    id_list = validate_ids(ids)
    if not id_list:
        raise InvalidInput("upsert needs at least one id", param="ids")
    matrix = as_matrix(vectors, len(id_list), dimension)
    docs = list(documents) if documents is not None else [""] * len(id_list)
    if len(docs) != len(id_list) or not all(isinstance(d, str) for d in docs):
        raise InvalidInput("documents must be one string per id", param="documents")
    metas = list(metadatas) if metadatas is not None else [None] * len(id_list)
    if len(metas) != len(id_list):
        raise InvalidInput("metadatas must be one object per id", param="metadatas")
    return id_list, matrix, docs, [clean_metadata(m) for m in metas]


def validate_top_k(top_k: object) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise InvalidInput(f"top_k must be an integer in 1..{MAX_TOP_K}", param="top_k")
    return top_k


def validate_paging(limit: object, offset: object) -> tuple[int | None, int]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidInput("limit must be a non-negative integer", param="limit")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInput("offset must be a non-negative integer", param="offset")
    return limit, offset


def order_by_request(records: list[VectorRecord], ids: Sequence[str]) -> list[VectorRecord]:
    """Records in the order their ids were asked for (missing ids skipped, repeats once)."""
    by_id = {r.id: r for r in records}
    seen: set[str] = set()
    out: list[VectorRecord] = []
    for item in ids:
        if item in by_id and item not in seen:
            seen.add(item)
            out.append(by_id[item])
    return out


def page(records: list[VectorRecord], limit: int | None, offset: int) -> list[VectorRecord]:
    return records[offset:] if limit is None else records[offset:offset + limit]
