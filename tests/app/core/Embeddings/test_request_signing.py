"""Pipeline message signing: valid messages verify, any change to job/stage/data/ts fails, stale and
future timestamps fail on an injected clock, missing or malformed fields fail, bytes and str fields
(as Redis returns them) sign alike, the canonical string, and the settings constructor."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tldw_Server_API.app.core.Embeddings.request_signing import BadSignature, MessageSigner
from tldw_Server_API.app.core.errors import TLDWError

SECRET = "s3cret-s3cret-s3cret"
NOW = 1_700_000_000.0
MESSAGE = {"job": "job-42", "stage": "embedding", "data": '{"chunks": ["hello"]}'}


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(max_age: float = 3600.0, secret: str | bytes = SECRET) -> tuple[MessageSigner, FakeClock]:
    clock = FakeClock()
    return MessageSigner(secret, max_age_seconds=max_age, clock=clock), clock


def signed(signer: MessageSigner, message: dict | None = None) -> dict:
    message = dict(MESSAGE if message is None else message)
    return {**message, **signer.sign(message)}


def reason(signer: MessageSigner, fields: dict) -> str:
    with pytest.raises(BadSignature) as caught:
        signer.verify(fields)
    assert caught.value.code == "bad_signature"
    assert isinstance(caught.value, TLDWError)
    return caught.value.message


def test_valid_message_verifies_and_sign_output_shape() -> None:
    signer, _ = make()
    extra = signer.sign(MESSAGE)
    assert set(extra) == {"ts", "sig"}
    assert extra["ts"] == str(int(NOW))
    assert len(extra["sig"]) == 64 and int(extra["sig"], 16) >= 0
    signer.verify({**MESSAGE, **extra})


def test_signature_is_hmac_of_the_documented_canonical_string() -> None:
    signer, _ = make()
    ts = str(int(NOW))
    canonical = f"tldw-emb-v1\nembedding\njob-42\n{ts}\n{hashlib.sha256(MESSAGE['data'].encode()).hexdigest()}"
    expected = hmac.new(SECRET.encode(), canonical.encode(), hashlib.sha256).hexdigest()
    assert signer.sign(MESSAGE) == {"ts": ts, "sig": expected}


@pytest.mark.parametrize(
    ("field", "value"),
    [("job", "job-43"), ("stage", "storage"), ("data", '{"chunks": ["hellO"]}'), ("data", ""),
     ("ts", str(int(NOW) - 1)), ("ts", "0" + str(int(NOW))), ("sig", "0" * 64)],
)
def test_any_change_to_a_signed_field_fails(field: str, value: str) -> None:
    signer, _ = make()
    fields = signed(signer)
    assert fields[field] != value
    fields[field] = value
    assert reason(signer, fields) == "signature mismatch"


@given(field=st.sampled_from(["job", "stage", "data"]), replacement=st.text(max_size=40))
def test_any_replacement_of_job_stage_or_data_fails(field: str, replacement: str) -> None:
    signer, _ = make()
    fields = signed(signer)
    if replacement == fields[field]:
        return
    with pytest.raises(BadSignature):
        signer.verify({**fields, field: replacement})


def test_other_secret_fails() -> None:
    signer, _ = make()
    other, _ = make(secret="another-secret-of-length")
    assert reason(other, signed(signer)) == "signature mismatch"


def test_stale_message_fails_after_max_age() -> None:
    signer, clock = make(max_age=3600.0)
    fields = signed(signer)
    clock.now = NOW + 3600.0
    signer.verify(fields)  # exactly at the limit is still fresh
    clock.now = NOW + 3601.0
    assert reason(signer, fields) == "stale message"


def test_message_from_the_future_fails_beyond_skew() -> None:
    signer, clock = make()
    fields = signed(signer)
    clock.now = NOW - 300.0
    signer.verify(fields)  # 300 s of clock skew is tolerated
    clock.now = NOW - 301.0
    assert reason(signer, fields) == "timestamp is in the future"


@pytest.mark.parametrize("dropped", ["sig", "ts"])
def test_missing_signature_fails(dropped: str) -> None:
    signer, _ = make()
    fields = signed(signer)
    del fields[dropped]
    assert reason(signer, fields) == "missing signature"


@pytest.mark.parametrize("dropped", ["job", "stage", "data"])
def test_missing_signed_field_fails(dropped: str) -> None:
    signer, _ = make()
    fields = signed(signer)
    del fields[dropped]
    assert reason(signer, fields) == f"missing field {dropped}"
    with pytest.raises(ValueError, match=dropped):
        signer.sign({k: v for k, v in MESSAGE.items() if k != dropped})


@pytest.mark.parametrize("ts", ["", "abc", "-1", "1.5", " 1700000000", "\u0661\u0662", "9" * 40])
def test_malformed_timestamp_fails(ts: str) -> None:
    signer, _ = make()
    fields = signed(signer)
    fields["ts"] = ts
    assert reason(signer, fields) == "malformed timestamp"


def test_newline_in_job_or_stage_is_refused() -> None:
    # Without this, stage "a\nb" + job "c" and stage "a" + job "b\nc" would share a canonical string.
    signer, _ = make()
    with pytest.raises(ValueError, match="newline"):
        signer.sign({**MESSAGE, "stage": "embedding\njob-42"})
    fields = signed(signer)
    fields["job"] = "job\n42"
    assert "newline" in reason(signer, fields)


def test_bytes_and_str_fields_sign_alike() -> None:
    signer, _ = make()
    as_bytes = {k.encode(): v.encode() for k, v in MESSAGE.items()}
    mixed: dict[str | bytes, str | bytes] = {
        "job": MESSAGE["job"].encode(), b"stage": MESSAGE["stage"], "data": MESSAGE["data"],
    }
    assert signer.sign(as_bytes) == signer.sign(MESSAGE) == signer.sign(mixed)
    redis_reply = {k.encode(): v.encode() for k, v in signed(signer).items()}
    signer.verify(redis_reply)


def test_bytes_and_str_secret_are_the_same_key() -> None:
    str_signer, _ = make(secret=SECRET)
    bytes_signer, _ = make(secret=SECRET.encode())
    assert str_signer.sign(MESSAGE) == bytes_signer.sign(MESSAGE)


@pytest.mark.parametrize("secret", ["", "short", "x" * 15, b"y" * 15])
def test_short_secret_rejected(secret: str | bytes) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        MessageSigner(secret)


def test_non_positive_max_age_rejected() -> None:
    with pytest.raises(ValueError, match="max_age"):
        MessageSigner(SECRET, max_age_seconds=0)


@pytest.mark.parametrize("value", [None, "", "   "])
def test_from_setting_unset_is_none(value: str | None) -> None:
    assert MessageSigner.from_setting(value, 60.0) is None


def test_from_setting_builds_a_signer_with_the_secret_and_max_age() -> None:
    # from_setting uses the real clock; the margins below are minutes, so timing cannot flake.
    signer = MessageSigner.from_setting(f" {SECRET}\n", 60.0)
    assert signer is not None
    now = time.time()
    MessageSigner(SECRET, clock=lambda: now).verify(signed(signer))  # whitespace dropped: same key
    fresh_enough = signed(MessageSigner(SECRET, clock=lambda: now - 30))
    too_old = signed(MessageSigner(SECRET, clock=lambda: now - 600))
    signer.verify(fresh_enough)
    assert reason(signer, too_old) == "stale message"
    with pytest.raises(ValueError):
        MessageSigner.from_setting("too-short", 60.0)
