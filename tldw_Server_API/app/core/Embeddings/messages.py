"""Pipeline messages on Redis Streams: the entry fields of a message (`job` for cheap scans by the
reconciler, `stage`, `data` = the `queue_schemas` JSON, and with a signer `ts` + `sig`, its
HMAC-SHA256 signature from `request_signing`) and back, and the dead-letter entry (its payload
AES-GCM encrypted with `dlq_crypto` when a key is set). A payload that does not decode raises
`MessageSchemaError` (the worker dead-letters it, never crashes). Pure: no Redis calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from tldw_Server_API.app.core.Embeddings.queue_schemas import MessageSchemaError, PipelineMessage, decode, encode

if TYPE_CHECKING:
    from tldw_Server_API.app.core.Embeddings.dlq_crypto import DLQCrypto
    from tldw_Server_API.app.core.Embeddings.request_signing import MessageSigner

Fields = Mapping[bytes | str, bytes | str]


def text_of(value: bytes | str | None) -> str:
    """A Redis reply value as text (replies are bytes unless the client decodes them)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")


def to_fields(message: PipelineMessage, signer: MessageSigner | None = None) -> dict[str, bytes | str]:
    fields: dict[str, bytes | str] = {"job": message.job_id, "stage": message.stage, "data": encode(message)}
    if signer is not None:
        fields.update(signer.sign(fields))
    return fields


def from_fields(fields: Fields) -> PipelineMessage:
    """The message of a stream entry; MessageSchemaError for anything else."""
    data = fields.get(b"data", fields.get("data"))
    if data is None:
        raise MessageSchemaError("stream entry has no 'data' field")
    return decode(data)


def job_of(fields: Fields) -> str:
    return text_of(fields.get(b"job", fields.get("job")))


def dead_letter_aad(stage: str, original_id: str) -> bytes:
    """What an encrypted DLQ payload is bound to: it decrypts only as the entry it was written for."""
    return f"{stage}|{original_id}".encode()


def dead_letter_fields(original_id: str, stage: str, fields: Fields, error: str, code: str, attempts: int,
                       failed_at: datetime, crypto: DLQCrypto | None = None) -> dict[str, str | bytes]:
    """A DLQ entry: where it came from, why, how often it was tried, and the payload as it was
    (encrypted with the newest key when `crypto` is given)."""
    data = fields.get(b"data") or fields.get("data") or b""
    if crypto is not None:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        data = crypto.encrypt(raw, aad=dead_letter_aad(stage, original_id))
    return {
        "original_id": original_id, "stage": stage, "job": job_of(fields), "error": error, "code": code,
        "attempts": str(attempts), "failed_at": failed_at.isoformat(), "data": data,
    }
