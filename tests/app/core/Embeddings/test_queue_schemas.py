"""Pipeline messages: encode/decode round trips for every stage (property-tested), schema version
checks, malformed payloads, vector packing (bit-exact float32), chunk ids and sub-batching."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tldw_Server_API.app.core.Embeddings.queue_schemas import (
    SCHEMA_VERSION,
    ChunkingMessage,
    ChunkMetadata,
    ChunkOptions,
    ChunkPayload,
    EmbeddingMessage,
    MessageSchemaError,
    StorageMessage,
    UnsupportedSchemaVersion,
    chunk_id,
    decode,
    encode,
    pack_vectors,
    split_into_batches,
    unpack_vectors,
)
from tldw_Server_API.app.core.errors import InvalidInput

NOW = datetime(2025, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=20)
texts = st.text(max_size=60)


def chunking_message(**overrides: object) -> ChunkingMessage:
    values: dict[str, object] = {
        "job_id": "job_1", "user_id": "alice", "media_id": 7, "content_hash": "h", "created_at": NOW,
        "chunk_options": ChunkOptions(method="sentences", size=50, overlap=5),
        "embedding_model": "m", "embedding_provider": "onnx",
    }
    values.update(overrides)
    return ChunkingMessage(**values)  # type: ignore[arg-type]


def storage_message(count: int = 2, dimension: int = 3) -> StorageMessage:
    vectors = np.arange(count * dimension, dtype=np.float32).reshape(count, dimension) / 7
    payload, dim = pack_vectors(vectors)
    metadata = [
        ChunkMetadata(media_id=7, job_id="job_1", chunk_index=i, start_char=i * 10, end_char=i * 10 + 9,
                      content_hash="h", embedding_model="m", embedding_provider="onnx", embedding_dimension=dim,
                      created_at=NOW)
        for i in range(count)
    ]
    return StorageMessage(job_id="job_1", user_id="alice", media_id=7, created_at=NOW, total_chunks=count,
                          chunk_ids=[chunk_id(7, i) for i in range(count)], documents=[f"t{i}" for i in range(count)],
                          vectors_b64=payload, dimension=dim, metadatas=metadata)


@given(ids, ids, st.integers(0, 2**40), texts, st.sampled_from(["high", "normal", "low"]),
       st.none() | texts, st.integers(1, 5000))
def test_chunking_messages_round_trip(
    job: str, user: str, media: int, content_hash: str, priority: str, content: str | None, size: int
) -> None:
    message = chunking_message(job_id=job, user_id=user, media_id=media, content_hash=content_hash,
                               priority=priority, content=content,
                               chunk_options=ChunkOptions(method="tokens", size=size, overlap=size - 1))
    assert decode(encode(message)) == message


@given(st.lists(st.tuples(texts, st.integers(0, 10_000), st.integers(0, 10_000)), max_size=8),
       st.integers(0, 3), st.none() | texts)
def test_embedding_messages_round_trip(chunks: list[tuple[str, int, int]], index: int, title: str | None) -> None:
    payloads = [ChunkPayload(chunk_index=i, text=t, start_char=s, end_char=e) for i, (t, s, e) in enumerate(chunks)]
    message = EmbeddingMessage(job_id="job_1", user_id="alice", media_id=7, created_at=NOW, content_hash="h",
                               embedding_model="m", embedding_provider="hf", title=title, chunks=payloads,
                               batch_index=index, batch_count=4, total_chunks=len(chunks))
    decoded = decode(encode(message))
    assert decoded == message and isinstance(decoded, EmbeddingMessage)


@given(st.integers(1, 6), st.integers(1, 8), st.data())
def test_storage_messages_round_trip_vectors_bit_exactly(count: int, dimension: int, data: st.DataObject) -> None:
    floats = st.floats(width=32, allow_nan=False)
    vectors = np.asarray(data.draw(st.lists(st.lists(floats, min_size=dimension, max_size=dimension),
                                            min_size=count, max_size=count)), dtype=np.float32)
    payload, dim = pack_vectors(vectors)
    base = storage_message(count, dim)
    message = base.model_copy(update={"vectors_b64": payload})
    decoded = decode(encode(message))
    assert isinstance(decoded, StorageMessage) and decoded == message
    assert decoded.vectors().dtype == np.float32
    assert decoded.vectors().tobytes() == vectors.tobytes()


def test_store_metadata_is_flat_and_complete() -> None:
    values = storage_message().metadatas[1].to_store_dict()
    assert set(values) == {"media_id", "job_id", "chunk_index", "start_char", "end_char", "content_hash",
                           "embedding_model", "embedding_provider", "embedding_dimension", "title", "created_at",
                           "chunk_hash"}
    assert None not in values.values() and values["title"] == "" and values["chunk_index"] == 1
    assert datetime.fromisoformat(str(values["created_at"])) == NOW


@pytest.mark.parametrize("version", [0, 1, 2, 6, "3", "4", "5", 3.0, True, None])
def test_other_schema_versions_are_refused_clearly(version: object) -> None:
    payload = orjson.loads(encode(chunking_message()))
    if version is None:
        del payload["schema_version"]
    else:
        payload["schema_version"] = version
    with pytest.raises(UnsupportedSchemaVersion, match="schema_version"):
        decode(orjson.dumps(payload))


@pytest.mark.parametrize("version", [3, 4])
def test_messages_of_earlier_versions_are_read_with_the_new_fields_defaulted(version: int) -> None:
    """Jobs queued (or stored as specs) before an upgrade to v5 go on after it."""
    payload = orjson.loads(encode(chunking_message()))
    del payload["reuse_unchanged"]
    if version == 3:
        del payload["daily_chunk_quota"]
    payload["schema_version"] = version
    message = decode(orjson.dumps(payload))
    assert isinstance(message, ChunkingMessage)
    assert message.schema_version == SCHEMA_VERSION == 5 and message.daily_chunk_quota == 0
    assert message.reuse_unchanged is False


def test_malformed_payloads_are_schema_errors_without_echoing_inputs() -> None:
    good = orjson.loads(encode(chunking_message()))
    for raw in (b"not json", b"[1, 2]", orjson.dumps({**good, "stage": "indexing"}),
                orjson.dumps({**good, "surprise": 1}), orjson.dumps({**good, "media_id": "secret-text-here"})):
        with pytest.raises(MessageSchemaError) as info:
            decode(raw)
        assert isinstance(info.value, InvalidInput) and "secret-text-here" not in info.value.message
    assert decode(encode(chunking_message()).decode()) == chunking_message()  # str input too


def test_messages_validate_their_shape() -> None:
    with pytest.raises(ValidationError):
        ChunkOptions(size=10, overlap=10)
    with pytest.raises(ValidationError):
        chunking_message(created_at=datetime(2025, 1, 1))  # naive times are refused
    with pytest.raises(ValidationError):
        EmbeddingMessage(job_id="j", user_id="u", media_id=1, created_at=NOW, content_hash="h", embedding_model="m",
                         embedding_provider="p", chunks=[], batch_index=2, batch_count=2, total_chunks=0)
    message = storage_message()
    with pytest.raises(ValidationError):
        StorageMessage(**{**message.model_dump(), "documents": ["only one"]})
    with pytest.raises(ValidationError):
        StorageMessage(**{**message.model_dump(), "dimension": 4})
    with pytest.raises(MessageSchemaError):
        unpack_vectors("%%%", 1, 1)
    with pytest.raises(InvalidInput):
        pack_vectors(np.zeros(3, dtype=np.float32))


def test_schema_version_is_stamped() -> None:
    assert orjson.loads(encode(storage_message()))["schema_version"] == SCHEMA_VERSION
    assert orjson.loads(encode(storage_message()))["stage"] == "storage"


def test_chunk_ids_are_deterministic() -> None:
    assert chunk_id(42, 0) == "media_42_chunk_0" and chunk_id(42, 17) == "media_42_chunk_17"


@given(st.lists(st.integers(), max_size=60), st.integers(1, 25))
def test_split_into_batches_keeps_every_item_once_in_order(items: list[int], size: int) -> None:
    batches = split_into_batches(items, size)
    assert [item for batch in batches for item in batch] == items
    assert all(0 < len(batch) <= size for batch in batches)
    assert len(batches) == -(-len(items) // size)


def test_split_into_batches_refuses_an_empty_budget() -> None:
    with pytest.raises(InvalidInput):
        split_into_batches([1], 0)
