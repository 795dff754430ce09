"""Encryption at rest of dead-letter payloads: AES-256-GCM with key ids, so keys can be rotated.

`DLQCrypto` holds a key list, newest first: it encrypts with the newest key and decrypts with
whichever key the token names. Pure: may import `cryptography` and core.errors only; it does no
I/O, reads no environment (the settings object passes the value in), and no message it raises
ever contains key material or plaintext.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tldw_Server_API.app.core.errors import TLDWError

TOKEN_PREFIX = "enc:v1:"
SETTING_NAME = "EMBEDDINGS_DLQ_ENCRYPTION_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16
_PREFIX = TOKEN_PREFIX.encode("ascii")
_FORBIDDEN_IN_KID = frozenset(":,")


class DLQDecryptError(TLDWError):
    """A dead-letter token could not be decrypted: unknown key id, malformed, or tampered with."""

    code = "dlq_decrypt_failed"


def _check_kid(kid: str) -> None:
    # The kid travels inside an ASCII token and inside a comma/colon separated setting.
    if not kid or not kid.isascii() or not kid.isprintable() or any(c.isspace() for c in kid):
        raise ValueError("a key id must be non-empty printable ASCII without whitespace")
    if _FORBIDDEN_IN_KID.intersection(kid):
        raise ValueError("a key id must not contain ':' or ','")


def _decode_key(text: str) -> bytes:
    """Standard or urlsafe base64, padding optional; raises ValueError (no key text in it)."""
    cleaned = text.strip().rstrip("=").replace("-", "+").replace("_", "/")
    try:
        key = base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"the key must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def _derived_kid(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def _parse_entry(entry: str) -> tuple[str, bytes]:
    if not entry:
        raise ValueError("the entry is empty")
    kid_text, sep, key_text = entry.partition(":")
    if not sep:
        key = _decode_key(entry)
        return _derived_kid(key), key
    kid = kid_text.strip()
    _check_kid(kid)
    return kid, _decode_key(key_text)


class DLQCrypto:
    """AES-256-GCM over dead-letter payloads with a key list, newest first (the encrypting key)."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("DLQCrypto needs at least one key")
        ciphers: dict[str, AESGCM] = {}
        for position, (kid, key) in enumerate(keys, start=1):
            _check_kid(kid)
            if kid in ciphers:
                raise ValueError(f"key {position}: key id {kid!r} repeats an earlier key")
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {position}: must be {KEY_BYTES} bytes, got {len(key)}")
            ciphers[kid] = AESGCM(bytes(key))
        self._ciphers = ciphers           # insertion order keeps "newest first"
        self._newest = next(iter(ciphers))

    @classmethod
    def from_setting(cls, value: str | None) -> DLQCrypto | None:
        """Parse `EMBEDDINGS_DLQ_ENCRYPTION_KEY`: `kid:BASE64KEY` or bare `BASE64KEY`, comma-separated,
        newest first. None or blank means encryption is off. Errors name the entry's position only."""
        if value is None or not value.strip():
            return None
        keys: list[tuple[str, bytes]] = []
        seen: dict[str, int] = {}
        for position, raw in enumerate(value.split(","), start=1):
            try:
                kid, key = _parse_entry(raw.strip())
            except ValueError as exc:
                raise ValueError(f"{SETTING_NAME} entry {position}: {exc}") from None
            if kid in seen:
                raise ValueError(f"{SETTING_NAME} entry {position}: key id repeats entry {seen[kid]}")
            seen[kid] = position
            keys.append((kid, key))
        return cls(keys)

    @property
    def key_ids(self) -> list[str]:
        """The configured key ids, newest (encrypting) first."""
        return list(self._ciphers)

    @staticmethod
    def is_encrypted(value: bytes | str | None) -> bool:
        """Whether a stored value is a token of this module (as opposed to a legacy plaintext)."""
        if value is None:
            return False
        if isinstance(value, str):
            return value.startswith(TOKEN_PREFIX)
        return bytes(value).startswith(_PREFIX)

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """`enc:v1:<kid>:<urlsafe b64(nonce + ciphertext + tag)>` under the newest key."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self._newest].encrypt(nonce, plaintext, aad)
        return _PREFIX + self._newest.encode("ascii") + b":" + base64.urlsafe_b64encode(nonce + sealed)

    def decrypt(self, token: bytes | str, aad: bytes = b"") -> bytes:
        """The plaintext of `token`, with the key it names; DLQDecryptError when that is not possible."""
        kid, raw = _split_token(token)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DLQDecryptError(f"DLQ payload is encrypted with key id {kid!r}, which is not configured")
        try:
            return cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DLQDecryptError("DLQ payload failed authentication (tampered, or wrong key or aad)") from None


def _split_token(token: bytes | str) -> tuple[str, bytes]:
    """(kid, nonce + ciphertext + tag) of a well-formed token, else DLQDecryptError."""
    try:
        data = token.encode("ascii") if isinstance(token, str) else bytes(token)
    except UnicodeEncodeError:
        raise DLQDecryptError("malformed DLQ token: not ASCII") from None
    if not data.startswith(_PREFIX):
        raise DLQDecryptError("malformed DLQ token: missing the enc:v1: prefix")
    kid_bytes, sep, body = data[len(_PREFIX):].partition(b":")
    kid = kid_bytes.decode("ascii", errors="replace")
    try:
        _check_kid(kid)
    except ValueError:
        raise DLQDecryptError("malformed DLQ token: bad key id") from None
    try:
        raw = base64.b64decode(body, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise DLQDecryptError("malformed DLQ token: body is not base64") from None
    # Reject non-canonical encodings, so that every change to the token is detected.
    if not sep or base64.urlsafe_b64encode(raw) != body or len(raw) < NONCE_BYTES + _TAG_BYTES:
        raise DLQDecryptError("malformed DLQ token: bad body")
    return kid, raw


def generate_key_entry() -> str:
    """A fresh `kid:base64key` entry for EMBEDDINGS_DLQ_ENCRYPTION_KEY (random 8-hex-char kid)."""
    key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    return f"{secrets.token_hex(4)}:{base64.urlsafe_b64encode(key).decode('ascii')}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tldw_Server_API.app.core.Embeddings.dlq_crypto",
        description=f"Tools for {SETTING_NAME}. To rotate, put the new entry first: NEW,OLD.",
    )
    parser.add_argument("--generate-key", action="store_true", help="print a new kid:base64key entry")
    args = parser.parse_args(argv)
    if not args.generate_key:
        parser.print_help()
        return 2
    print(generate_key_entry())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
