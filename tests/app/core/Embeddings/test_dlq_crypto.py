"""DLQ encryption at rest: round trips (property), the token hides the plaintext, any one-byte
change to a token fails, aad binding, key rotation, parsing EMBEDDINGS_DLQ_ENCRYPTION_KEY (good
entries, and bad ones whose errors carry no key material), and the --generate-key command."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tldw_Server_API.app.core.Embeddings.dlq_crypto import (
    DLQCrypto,
    DLQDecryptError,
    generate_key_entry,
    main,
)
from tldw_Server_API.app.core.errors import TLDWError

OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
PLAINTEXT = b'{"job": "j-1", "text": "a very private chunk of text"}'


def crypto(*keys: tuple[str, bytes]) -> DLQCrypto:
    return DLQCrypto(list(keys) or [("old", OLD_KEY)])


def b64(key: bytes, *, urlsafe: bool = False) -> str:
    return (base64.urlsafe_b64encode(key) if urlsafe else base64.b64encode(key)).decode("ascii")


@given(plaintext=st.binary(max_size=2048), aad=st.binary(max_size=64))
def test_round_trip_any_payload(plaintext: bytes, aad: bytes) -> None:
    box = crypto()
    token = box.encrypt(plaintext, aad)
    assert DLQCrypto.is_encrypted(token)
    assert box.decrypt(token, aad) == plaintext
    assert box.decrypt(token.decode("ascii"), aad) == plaintext  # str tokens, as Redis may return


def test_token_format_and_no_plaintext_inside() -> None:
    box = crypto(("new", NEW_KEY), ("old", OLD_KEY))
    token = box.encrypt(PLAINTEXT)
    assert token.startswith(b"enc:v1:new:")  # the newest key encrypts
    assert token.isascii()
    assert b"private" not in token
    raw = base64.urlsafe_b64decode(token.split(b":", 3)[3])
    assert b"private" not in raw
    assert len(raw) == 12 + len(PLAINTEXT) + 16  # nonce + ciphertext + tag


def test_fresh_nonce_per_encryption() -> None:
    box = crypto()
    assert box.encrypt(PLAINTEXT) != box.encrypt(PLAINTEXT)


def test_every_one_byte_change_to_a_token_fails() -> None:
    box = crypto()
    token = box.encrypt(PLAINTEXT, b"job-1")
    for position in range(len(token)):
        tampered = bytearray(token)
        tampered[position] ^= 0x01
        with pytest.raises(DLQDecryptError):
            box.decrypt(bytes(tampered), b"job-1")


def test_non_canonical_base64_spellings_of_the_same_bytes_fail() -> None:
    # The last base64 digit before "=" has unused low bits: other digits decode to the same bytes.
    box = crypto()
    token = box.encrypt(PLAINTEXT)
    assert (12 + len(PLAINTEXT) + 16) % 3 != 0 and token.endswith(b"=")
    head, last = token.rstrip(b"=")[:-1], token.rstrip(b"=")[-1:]
    padding = token[len(head) + 1:]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for digit in alphabet:
        if bytes([digit]) != last:
            with pytest.raises(DLQDecryptError):
                box.decrypt(head + bytes([digit]) + padding)


def test_flipped_ciphertext_byte_fails_authentication() -> None:
    box = crypto()
    head, _, body = box.encrypt(PLAINTEXT).rpartition(b":")
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[20] ^= 0x80
    with pytest.raises(DLQDecryptError, match="authentication") as caught:
        box.decrypt(head + b":" + base64.urlsafe_b64encode(bytes(raw)))
    assert caught.value.code == "dlq_decrypt_failed"
    assert isinstance(caught.value, TLDWError)


def test_wrong_aad_fails() -> None:
    box = crypto()
    token = box.encrypt(PLAINTEXT, b"job-1")
    with pytest.raises(DLQDecryptError):
        box.decrypt(token, b"job-2")
    with pytest.raises(DLQDecryptError):
        box.decrypt(token)


@pytest.mark.parametrize(
    "token",
    [b"", b"enc:v1:", b"enc:v1:old", b"enc:v1:old:", b"enc:v1:old:!!!!", b"enc:v2:old:AAAA",
     b"enc:v1:old:" + base64.urlsafe_b64encode(b"too short"), "enc:v1:old:\u00e9", PLAINTEXT],
)
def test_malformed_tokens_fail_cleanly(token: bytes | str) -> None:
    with pytest.raises(DLQDecryptError, match="malformed"):
        crypto().decrypt(token)


def test_rotation_old_tokens_decrypt_until_the_old_key_is_dropped() -> None:
    old_token = crypto(("old", OLD_KEY)).encrypt(PLAINTEXT)
    rotated = crypto(("new", NEW_KEY), ("old", OLD_KEY))
    assert rotated.decrypt(old_token) == PLAINTEXT
    assert rotated.encrypt(PLAINTEXT).startswith(b"enc:v1:new:")
    with pytest.raises(DLQDecryptError, match="'old'") as caught:
        crypto(("new", NEW_KEY)).decrypt(old_token)
    assert "not configured" in caught.value.message


def test_same_kid_with_a_different_key_fails() -> None:
    token = crypto(("k1", OLD_KEY)).encrypt(PLAINTEXT)
    with pytest.raises(DLQDecryptError, match="authentication"):
        crypto(("k1", NEW_KEY)).decrypt(token)


def test_errors_never_contain_plaintext_or_key() -> None:
    token = crypto(("old", OLD_KEY)).encrypt(PLAINTEXT)
    for box, aad in ((crypto(("new", NEW_KEY)), b""), (crypto(("old", OLD_KEY)), b"other")):
        with pytest.raises(DLQDecryptError) as caught:
            box.decrypt(token, aad)
        text = str(caught.value)
        for secret in (b64(OLD_KEY), b64(NEW_KEY), "private"):
            assert secret not in text


@pytest.mark.parametrize(
    "keys",
    [[], [("a", b"short")], [("a", OLD_KEY + b"x")], [("a", OLD_KEY), ("a", NEW_KEY)],
     [("a:b", OLD_KEY)], [("a,b", OLD_KEY)], [("", OLD_KEY)], [("a b", OLD_KEY)]],
)
def test_constructor_rejects_bad_key_lists(keys: list[tuple[str, bytes]]) -> None:
    with pytest.raises(ValueError):
        DLQCrypto(keys)


def test_key_ids_newest_first() -> None:
    assert crypto(("new", NEW_KEY), ("old", OLD_KEY)).key_ids == ["new", "old"]


@pytest.mark.parametrize("value", [None, "", "   ", "\n"])
def test_from_setting_unset_or_blank_is_off(value: str | None) -> None:
    assert DLQCrypto.from_setting(value) is None


def test_from_setting_parses_kid_and_bare_entries_in_either_alphabet() -> None:
    # Keys whose base64 uses the characters that differ between the two alphabets.
    std_key, url_key = bytes([0xFB] * 32), bytes([0xFF] * 32)
    assert "+" in b64(std_key) and "_" in b64(url_key, urlsafe=True)
    setting = f" new:{b64(std_key)} , {b64(url_key, urlsafe=True).rstrip('=')},old:{b64(OLD_KEY)}"
    box = DLQCrypto.from_setting(setting)
    assert box is not None
    bare_kid = hashlib.sha256(url_key).hexdigest()[:8]
    assert box.key_ids == ["new", bare_kid, "old"]
    assert box.decrypt(crypto(("new", std_key)).encrypt(PLAINTEXT)) == PLAINTEXT
    assert box.decrypt(crypto((bare_kid, url_key)).encrypt(PLAINTEXT)) == PLAINTEXT
    assert box.decrypt(crypto(("old", OLD_KEY)).encrypt(PLAINTEXT)) == PLAINTEXT


BAD_SETTINGS = {
    "16-byte key": (f"a:{b64(OLD_KEY)},b:{b64(OLD_KEY[:16])}", 2),
    "not base64": (f"a:{b64(OLD_KEY)},b:{b64(OLD_KEY)}*", 2),
    "repeated kid": (f"a:{b64(OLD_KEY)},a:{b64(NEW_KEY)}", 2),
    "same bare key twice": (f"{b64(OLD_KEY)},{b64(OLD_KEY)}", 2),
    "empty kid": (f":{b64(OLD_KEY)}", 1),
    "empty entry": (f"a:{b64(OLD_KEY)},,b:{b64(NEW_KEY)}", 2),
    "whitespace in kid": (f"a b:{b64(OLD_KEY)}", 1),
    "second colon": (f"a:b:{b64(OLD_KEY)}", 1),
    "two keys glued": (f"a:{b64(NEW_KEY)}{b64(OLD_KEY)}", 1),
}


@pytest.mark.parametrize(("setting", "position"), BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_from_setting_rejects_bad_entries_without_leaking_keys(setting: str, position: int) -> None:
    with pytest.raises(ValueError, match=f"entry {position}:") as caught:
        DLQCrypto.from_setting(setting)
    error = caught.value
    assert "EMBEDDINGS_DLQ_ENCRYPTION_KEY" in str(error)
    for key in (OLD_KEY, NEW_KEY, OLD_KEY[:16]):
        for encoded in (b64(key), b64(key, urlsafe=True), b64(key).rstrip("=")[:12]):
            assert encoded not in str(error)
    # No chained decoder error that could carry the entry's text into a traceback.
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_generate_key_entry_parses_back_and_is_random() -> None:
    entry = generate_key_entry()
    kid, _, key = entry.partition(":")
    assert len(kid) == 8 and int(kid, 16) >= 0
    assert len(base64.urlsafe_b64decode(key)) == 32
    box = DLQCrypto.from_setting(entry)
    assert box is not None and box.key_ids == [kid]
    assert box.decrypt(box.encrypt(PLAINTEXT)) == PLAINTEXT
    assert generate_key_entry() != entry


def test_main_generate_key_prints_an_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--generate-key"]) == 0
    entry = capsys.readouterr().out.strip()
    assert DLQCrypto.from_setting(entry) is not None
    assert main([]) == 2


def test_module_runs_as_a_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tldw_Server_API.app.core.Embeddings.dlq_crypto", "--generate-key"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    assert DLQCrypto.from_setting(result.stdout.strip()) is not None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), ("", False), ("enc:v1:k:AAAA", True), (b"enc:v1:k:AAAA", True),
     ("enc:v2:k:AAAA", False), (b'{"job": 1}', False), ("ENC:V1:k:AAAA", False)],
)
def test_is_encrypted(value: bytes | str | None, expected: bool) -> None:
    assert DLQCrypto.is_encrypted(value) is expected
