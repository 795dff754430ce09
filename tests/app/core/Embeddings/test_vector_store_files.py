"""The pure parts of vector store files: OpenAI's `chunking_strategy` mapped onto the job's
chunking (clamped to the model's window, a clear 400 when the overlap cannot fit), and a store
file's status read from its job."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobRecord, JobStatus
from tldw_Server_API.app.core.Embeddings.vector_store_files import file_status, static_chunking
from tldw_Server_API.app.core.errors import InvalidInput

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def job(status: JobStatus, error: str | None = None) -> JobRecord:
    return JobRecord("job_1", "u", 1, status, "normal", 0.0, 0, 0, 0, "m", "p", "tokens", 100, 10, None, error,
                     NOW, None, NOW, None)


def test_auto_is_the_default_chunking_and_static_is_clamped_to_the_window() -> None:
    assert static_chunking(None, 254) == (None, None)
    assert static_chunking({"type": "auto"}, 254) == (None, None)
    assert static_chunking({"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 20}},
                           254) == (200, 20)
    assert static_chunking({"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 100}},
                           254) == (254, 100)


@pytest.mark.parametrize("strategy, param", [
    ({"type": "static", "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400}},
     "chunking_strategy.static.chunk_overlap_tokens"),       # fits 800, not the clamped 254
    ({"type": "static", "static": {"max_chunk_size_tokens": 50}}, "chunking_strategy.static.max_chunk_size_tokens"),
    ({"type": "static"}, "chunking_strategy"),
    ({"type": "semantic"}, "chunking_strategy"),
])
def test_impossible_strategies_are_clear_400s(strategy: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        static_chunking(strategy, 254)
    assert caught.value.param == param
    if param.endswith("overlap_tokens"):
        assert "window of 254 tokens" in caught.value.message


def test_a_files_status_is_its_jobs() -> None:
    assert file_status(None, "not a PDF") == ("failed", {"code": "invalid_file", "message": "not a PDF"})
    for running in (JobStatus.QUEUED, JobStatus.CHUNKING, JobStatus.EMBEDDING, JobStatus.STORING):
        assert file_status(job(running), None) == ("in_progress", None)
    assert file_status(job(JobStatus.COMPLETED), None) == ("completed", None)
    assert file_status(job(JobStatus.CANCELLED), None) == ("cancelled", None)
    assert file_status(job(JobStatus.FAILED, "ProviderError: down"), None) == (
        "failed", {"code": "server_error", "message": "ProviderError: down"})
