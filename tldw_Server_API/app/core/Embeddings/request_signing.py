"""HMAC-SHA256 signing of embedding pipeline messages passed between services over Redis streams.

A signature covers the message's `job`, `stage`, `data` and its `ts`; other fields are not signed.
Pure: may import core.errors only; the clock is injected, nothing reads the environment (the
settings object passes the secret in), and no error message contains the secret or the data.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

from tldw_Server_API.app.core.errors import TLDWError

SIGNATURE_VERSION = "tldw-emb-v1"
MIN_SECRET_BYTES = 16
MAX_FUTURE_SKEW_SECONDS = 300.0
SIGNED_FIELDS = ("job", "stage", "data")
_MAX_TS_DIGITS = 16  # far past any real clock; keeps int() on hostile input cheap

# Keys and values may be `bytes` or `str`, as Redis returns them (decode_responses on or off).
Fields = Mapping[Any, bytes | str]


class BadSignature(TLDWError):
    """A pipeline message is unsigned, stale, from the future, malformed or altered."""

    code = "bad_signature"


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _field(fields: Fields, name: str) -> bytes | None:
    value = fields.get(name)
    if value is None:
        value = fields.get(name.encode("ascii"))
    return None if value is None else _as_bytes(value)


def _canonical(job: bytes, stage: bytes, data: bytes, ts: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest().encode("ascii")
    return b"\n".join((SIGNATURE_VERSION.encode("ascii"), stage, job, ts, digest))


def _signed_parts(fields: Fields) -> tuple[bytes, bytes, bytes] | str:
    """(job, stage, data), or the reason they cannot be signed."""
    job, stage, data = (_field(fields, name) for name in SIGNED_FIELDS)
    if job is None or stage is None or data is None:
        missing = [name for name, value in zip(SIGNED_FIELDS, (job, stage, data), strict=True) if value is None]
        return f"missing field {', '.join(missing)}"
    # A newline in job or stage could shift text from one line of the canonical string to the next.
    if b"\n" in job or b"\n" in stage:
        return "job and stage must not contain a newline"
    return job, stage, data


class MessageSigner:
    """Signs and verifies pipeline messages with a shared secret and an injected clock."""

    def __init__(
        self,
        secret: str | bytes,
        max_age_seconds: float = 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        key = _as_bytes(secret)
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"the signing secret must be at least {MIN_SECRET_BYTES} bytes")
        if not max_age_seconds > 0:
            raise ValueError("max_age_seconds must be positive")
        self._key = key
        self._max_age = float(max_age_seconds)
        self._clock = clock

    @classmethod
    def from_setting(cls, secret: str | None, max_age_seconds: float) -> MessageSigner | None:
        """A signer for the configured secret (surrounding whitespace dropped); None when unset or blank."""
        if secret is None or not secret.strip():
            return None
        return cls(secret.strip(), max_age_seconds)

    def _mac(self, job: bytes, stage: bytes, data: bytes, ts: bytes) -> bytes:
        return hmac.new(self._key, _canonical(job, stage, data, ts), hashlib.sha256).hexdigest().encode("ascii")

    def sign(self, fields: Fields) -> dict[str, str]:
        """`{"ts", "sig"}` to add to the message; ValueError if job, stage or data is missing."""
        parts = _signed_parts(fields)
        if isinstance(parts, str):
            raise ValueError(f"cannot sign message: {parts}")
        ts = str(int(self._clock()))
        return {"ts": ts, "sig": self._mac(*parts, ts.encode("ascii")).decode("ascii")}

    def verify(self, fields: Fields) -> None:
        """Return if the message is authentic and fresh; raise BadSignature with a short reason."""
        sig, ts = _field(fields, "sig"), _field(fields, "ts")
        if sig is None or ts is None:
            raise BadSignature("missing signature")
        parts = _signed_parts(fields)
        if isinstance(parts, str):
            raise BadSignature(parts)
        if not ts.isdigit() or len(ts) > _MAX_TS_DIGITS:  # bytes.isdigit is ASCII-only
            raise BadSignature("malformed timestamp")
        if not hmac.compare_digest(self._mac(*parts, ts), sig):
            raise BadSignature("signature mismatch")
        # Freshness is judged only on an authentic timestamp.
        age = self._clock() - int(ts)
        if age > self._max_age:
            raise BadSignature("stale message")
        if -age > MAX_FUTURE_SKEW_SECONDS:
            raise BadSignature("timestamp is in the future")
