"""Pipeline messages on Redis Streams: the entry fields of a message (`job` for cheap scans by the
reconciler, `stage`, `data` = the `queue_schemas` JSON) and back, and the dead-letter entry. A
payload that does not decode raises `MessageSchemaError` (the worker dead-letters it, never
crashes). Pure: no Redis calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from tldw_Server_API.app.core.Embeddings.queue_schemas import MessageSchemaError, PipelineMessage, decode, encode

Fields = Mapping[bytes | str, bytes | str]


def text_of(value: bytes | str | None) -> str:
    """A Redis reply value as text (replies are bytes unless the client decodes them)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


def to_fields(message: PipelineMessage) -> dict[str, bytes | str]:
    return {"job": message.job_id, "stage": message.stage, "data": encode(message)}


def from_fields(fields: Fields) -> PipelineMessage:
    """The message of a stream entry; MessageSchemaError for anything else."""
    data = fields.get(b"data", fields.get("data"))
    if data is None:
        raise MessageSchemaError("stream entry has no 'data' field")
    return decode(data)


def job_of(fields: Fields) -> str:
    return text_of(fields.get(b"job", fields.get("job")))


def dead_letter_fields(original_id: str, stage: str, fields: Fields, error: str, code: str, attempts: int,
                       failed_at: datetime) -> dict[str, str | bytes]:
    """A DLQ entry: where it came from, why, how often it was tried, and the payload as it was."""
    return {
        "original_id": original_id, "stage": stage, "job": job_of(fields), "error": error, "code": code,
        "attempts": str(attempts), "failed_at": failed_at.isoformat(), "state": "new",
        "data": fields.get(b"data") or fields.get("data") or b"",
    }
