"""Pure parts of the OpenAI-compatible vector stores: the store's width rule, checks of upsert
records (ids, widths, metadata, content), OpenAI search filters translated into the where-language
of `RAG/vector_stores/filters.py`, merging the hits of several queries and naming a hit's source.

Imports numpy, core errors, chunk types and the vector-store checks; no I/O, clients or clocks.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from tldw_Server_API.app.core.Chunking import Chunk
from tldw_Server_API.app.core.errors import InvalidInput
from tldw_Server_API.app.core.RAG.vector_stores.base import (
    MAX_DIMENSION,
    Metadata,
    VectorHit,
    as_matrix,
    as_query_vector,
    clean_metadata,
    validate_ids,
)
from tldw_Server_API.app.core.RAG.vector_stores.filters import parse_where

MAX_UPSERT_RECORDS = 1000       # one synchronous upsert (all or nothing)
MAX_BATCH_RECORDS = 10_000      # one background batch (counted per record)
MAX_CONTENT_CHARS = 100_000     # content to embed, per record (the model truncates to its window anyway)
MAX_SEARCH_RESULTS = 50         # OpenAI's bound on `max_num_results`
MAX_SEARCH_QUERIES = 16
MAX_LIST_VECTORS = 1000
MAX_MEDIA_PER_STORE = 100
VECTOR_ID_PREFIX = "vec"
_COMPARISONS = {"eq": "$eq", "ne": "$ne", "gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte",
                "in": "$in", "nin": "$nin"}
_MAX_FILTER_DEPTH = 8


@dataclass(frozen=True)
class VectorInput:
    """One record as the caller sent it: `values`, or `content` to embed with the store's model,
    or both (then `content` is stored beside the given vector)."""

    id: str | None = None
    values: Sequence[float] | None = None
    content: str | None = None
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class PreparedRecord:
    index: int                 # position in the caller's list, for error messages and counts
    id: str
    values: np.ndarray | None  # float32 of the store's width; None: embed `content`
    content: str
    metadata: Metadata


def encode_record(record: VectorInput) -> dict[str, Any]:
    """A batch record as JSON for the batch's spec: values as base64 float32 when they are a
    vector of numbers, else as given (a bad record must fail the same way after a resume)."""
    values: Any = record.values
    if values is not None:
        try:
            array = np.asarray(values, dtype="<f4")
            if array.ndim == 1 and np.isfinite(array).all() and not isinstance(values, str | bytes):
                values = {"f32": base64.b64encode(array.tobytes()).decode("ascii")}
        except (TypeError, ValueError):
            pass
    if values is not None and not isinstance(values, dict):
        values = list(values) if isinstance(values, list | tuple) else values
    return {"id": record.id, "content": record.content, "metadata": dict(record.metadata or {}) if
            isinstance(record.metadata, Mapping) else record.metadata, "values": values}


def decode_record(item: Mapping[str, Any]) -> VectorInput:
    """The `VectorInput` of `encode_record`."""
    values = item.get("values")
    if isinstance(values, dict) and "f32" in values:
        values = np.frombuffer(base64.b64decode(values["f32"]), dtype="<f4").astype(np.float32).tolist()
    return VectorInput(id=item.get("id"), values=values, content=item.get("content"),  # type: ignore[arg-type]
                       metadata=item.get("metadata"))  # as the caller sent them: a bad record fails again


def new_vector_id() -> str:
    return f"{VECTOR_ID_PREFIX}_{uuid.uuid4().hex}"


@contextmanager
def renamed_param(param: str) -> Iterator[None]:
    """Re-raise an InvalidInput from a shared check under the wire name of the field."""
    try:
        yield
    except InvalidInput as exc:
        raise type(exc)(exc.message, param=param, code=exc.code) from exc


def store_dimensions(requested: object, native: int | None, model_id: str) -> int:
    """The width of a new store: the model's own, or `requested` when it is unknown. A requested
    width other than the model's is refused: stored vectors and embedded content must agree."""
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int)
                                  or not 1 <= requested <= MAX_DIMENSION):
        raise InvalidInput(f"dimensions must be an integer in 1..{MAX_DIMENSION}", param="dimensions")
    if native is None:
        if requested is None:
            raise InvalidInput(f"the width of model '{model_id}' is not known: give 'dimensions'",
                               param="dimensions")
        return requested
    if requested is not None and requested != native:
        raise InvalidInput(f"dimensions {requested} does not match model '{model_id}', which has {native}",
                           param="dimensions", code="dimension_mismatch")
    return native


def check_record_count(count: int, maximum: int) -> None:
    if not 1 <= count <= maximum:
        raise InvalidInput(f"records must hold 1 to {maximum} items", param="records")


def prepare_record(index: int, record: VectorInput, dimension: int) -> PreparedRecord:
    """One record checked: id (generated when absent), values of the store's width or content to
    embed, scalar metadata. InvalidInput names the field, e.g. `records[3].values`."""
    where = f"records[{index}]"
    record_id = record.id if record.id is not None else new_vector_id()
    with renamed_param(f"{where}.id"):
        validate_ids([record_id])
    content = record.content
    if content is not None and not isinstance(content, str):
        raise InvalidInput("content must be a string", param=f"{where}.content")
    if content is not None and len(content) > MAX_CONTENT_CHARS:
        raise InvalidInput(f"content is longer than {MAX_CONTENT_CHARS} characters", param=f"{where}.content")
    values: np.ndarray | None = None
    if record.values is not None:
        with renamed_param(f"{where}.values"):
            values = as_matrix([record.values], 1, dimension)[0]
    elif content is None or not content.strip():
        raise InvalidInput("each record needs 'values' or non-empty 'content'", param=where)
    with renamed_param(f"{where}.metadata"):
        metadata = clean_metadata(record.metadata)
    return PreparedRecord(index, record_id, values, content or "", metadata)


def check_unique_ids(records: Sequence[VectorInput]) -> None:
    seen: set[str] = set()
    for index, record in enumerate(records):
        if record.id is None:
            continue
        if record.id in seen:
            raise InvalidInput(f"id {record.id!r} appears twice", param=f"records[{index}].id")
        seen.add(record.id)


def prepare_records(records: Sequence[VectorInput], dimension: int, maximum: int) -> list[PreparedRecord]:
    """All or nothing: the first bad record raises, naming its index."""
    check_record_count(len(records), maximum)
    check_unique_ids(records)
    return [prepare_record(i, record, dimension) for i, record in enumerate(records)]


def triage_records(records: Sequence[VectorInput], dimension: int,
                   start: int = 0) -> tuple[list[PreparedRecord], list[InvalidInput]]:
    """For batches, which count per record: the good records and the error of each bad one.
    `start` is the position of `records[0]` in the whole batch."""
    good: list[PreparedRecord] = []
    bad: list[InvalidInput] = []
    for offset, record in enumerate(records):
        try:
            good.append(prepare_record(start + offset, record, dimension))
        except InvalidInput as exc:
            bad.append(exc)
    return good, bad


def query_vector(text: object, vector: object, dimension: int) -> np.ndarray | None:
    """The query vector when `vector` is given, None when `text` must be embedded; exactly one."""
    if (text is None) == (vector is None):
        raise InvalidInput("give exactly one of 'query' (text) or 'vector'", param="query")
    if vector is not None:
        with renamed_param("vector"):
            return as_query_vector(vector, dimension)
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("query must be a non-empty string", param="query")
    return None


def checked_where(where: Mapping[str, Any] | None, param: str = "filter") -> dict[str, Any] | None:
    """A where dict validated now (so a bad filter is 400 before any work), under `param`."""
    if where is None:
        return None
    if not isinstance(where, Mapping):
        raise InvalidInput("filter must be an object", param=param)
    with renamed_param(param):
        parse_where(where)
    return dict(where) or None


def openai_filter_to_where(node: object, depth: int = 0) -> dict[str, Any]:
    """OpenAI's search filters (`{type: eq|ne|gt|gte|lt|lte|in|nin, key, value}` and
    `{type: and|or, filters: [...]}`) as a where dict of the shared filter language."""
    if depth > _MAX_FILTER_DEPTH:
        raise InvalidInput(f"filters are nested deeper than {_MAX_FILTER_DEPTH} levels", param="filters")
    if not isinstance(node, Mapping):
        raise InvalidInput("each filter is an object with a 'type'", param="filters")
    kind = node.get("type")
    if kind in ("and", "or"):
        children = node.get("filters")
        if not isinstance(children, list) or not children:
            raise InvalidInput(f"an '{kind}' filter needs a non-empty 'filters' list", param="filters")
        return {f"${kind}": [openai_filter_to_where(child, depth + 1) for child in children]}
    if not isinstance(kind, str) or kind not in _COMPARISONS:
        raise InvalidInput(f"unknown filter type {kind!r} (use {', '.join([*_COMPARISONS, 'and', 'or'])})",
                           param="filters")
    key, value = node.get("key"), node.get("value")
    if not isinstance(key, str):
        raise InvalidInput("a comparison filter needs a string 'key'", param="filters")
    return {key: {_COMPARISONS[kind]: list(value) if isinstance(value, (list, tuple)) else value}}


def merge_hits(hit_lists: Sequence[Sequence[VectorHit]], limit: int,
               score_threshold: float | None = None) -> list[VectorHit]:
    """The best `limit` distinct records over several queries (each keeps its best score),
    best first, ties by id; hits under `score_threshold` are dropped."""
    best: dict[str, VectorHit] = {}
    for hits in hit_lists:
        for hit in hits:
            if hit.id not in best or hit.score > best[hit.id].score:
                best[hit.id] = hit
    ranked = sorted(best.values(), key=lambda hit: (-hit.score, hit.id))
    if score_threshold is not None:
        ranked = [hit for hit in ranked if hit.score >= score_threshold]
    return ranked[:limit]


def hit_source(record_id: str, metadata: Mapping[str, Any]) -> tuple[str, str]:
    """(file_id, filename) of a search result: the record's own `file_id`/`filename` metadata,
    else its media (`media_<id>`, title), else the record id."""
    file_id = metadata.get("file_id")
    if not isinstance(file_id, str) or not file_id:
        media_id = metadata.get("media_id")
        file_id = f"media_{media_id}" if media_id is not None else record_id
    for key in ("filename", "title"):
        name = metadata.get(key)
        if isinstance(name, str) and name:
            return file_id, name
    return file_id, file_id


def media_chunk_records(media_id: int, title: str, content_hash: str, chunks: Sequence[Chunk]) -> list[VectorInput]:
    """Records of one media's chunks; ids `media_<id>_chunk_<i>` so re-runs overwrite."""
    return [
        VectorInput(
            id=f"media_{media_id}_chunk_{chunk.index}", content=chunk.text,
            metadata={"media_id": media_id, "chunk_index": chunk.index, "start_char": chunk.start_char,
                      "end_char": chunk.end_char, "title": title, "content_hash": content_hash,
                      **({"page": chunk.page} if chunk.page is not None else {})},
        )
        for chunk in chunks if chunk.text.strip()
    ]


def usage_bytes(vector_count: int, dimension: int) -> int:
    """What the store's vectors take as float32 (OpenAI's `usage_bytes`, approximately)."""
    return vector_count * dimension * 4


def check_page(limit: object, offset: object, maximum: int) -> tuple[int, int]:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise InvalidInput(f"limit must be between 1 and {maximum}", param="limit")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidInput("offset must be a non-negative integer", param="offset")
    return limit, offset
