"""API-key authentication of the host.

Two modes: single-user (one admin key from SINGLE_USER_API_KEY, or generated once into the data
dir) and multi-user (API_KEYS_FILE: YAML list of keys -> user id + roles, and a tier naming the
user's allowance of embedding jobs). Keys are held as SHA-256
digests, compared in constant time, and never logged. `load_key_store` does the I/O; `APIKeyStore`
is the pure lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tldw_Server_API.app.core.config import AuthConfig
from tldw_Server_API.app.core.errors import AuthenticationFailed, InvalidInput

USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")  # always used with fullmatch
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
ROLES = frozenset({"user", "admin"})
SINGLE_USER_ID = "single_user"
KEY_FILE_NAME = "single_user_api_key"


def validate_user_id(user_id: object) -> str:
    """A user id as a path-safe string: `[A-Za-z0-9_-]{1,64}`, whole-string match (user ids name
    per-user directories, collections and tables)."""
    if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
        raise InvalidInput("user id must be 1-64 characters of letters, digits, '_' or '-'", param="user_id")
    return user_id


@dataclass(frozen=True)
class User:
    id: str
    roles: frozenset[str] = field(default_factory=lambda: frozenset({"user"}))
    tier: str = "enterprise"    # the allowance of media embedding jobs (`TierLimits`)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class APIKeyStore:
    """SHA-256(key) -> User. `authenticate` never says which part of a key was wrong."""

    def __init__(self, users_by_digest: dict[bytes, User], source: str) -> None:
        self._users = dict(users_by_digest)
        self.source = source  # where the keys came from, for the startup log; never a key

    def authenticate(self, presented: str | None) -> User:
        if not presented:
            raise AuthenticationFailed(
                "You didn't provide an API key. Send 'Authorization: Bearer <key>' or 'X-API-KEY: <key>'."
            )
        digest = _digest(presented)
        user = self._users.get(digest)
        # The dict lookup is on a digest of the presented key, so its timing tells nothing about
        # stored keys; the compare_digest keeps the final check constant-time as well.
        if user is None or not any(hmac.compare_digest(digest, known) for known in self._users):
            raise AuthenticationFailed("Incorrect API key provided.")
        return user

    def __len__(self) -> int:
        return len(self._users)


def _parse_entry(i: int, entry: Any, config: AuthConfig) -> tuple[bytes, User]:
    if not isinstance(entry, dict):
        raise InvalidInput(f"API_KEYS_FILE entry {i} must be a mapping")
    user_id, roles = entry.get("user_id"), entry.get("roles", ["user"])
    if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
        raise InvalidInput(f"API_KEYS_FILE entry {i}: user_id must match {USER_ID_PATTERN.pattern}")
    if not isinstance(roles, list) or not roles or not all(isinstance(r, str) and r in ROLES for r in roles):
        raise InvalidInput(f"API_KEYS_FILE entry {i}: roles must be a non-empty list among {sorted(ROLES)}")
    tier = entry.get("tier", config.default_tier)
    if tier not in config.tiers:
        raise InvalidInput(f"API_KEYS_FILE entry {i}: tier must be one of {sorted(config.tiers)}")
    key_hash, key = entry.get("key_sha256"), entry.get("key")
    if key_hash is not None:
        if not isinstance(key_hash, str) or not _SHA256_HEX.fullmatch(key_hash):
            raise InvalidInput(f"API_KEYS_FILE entry {i}: key_sha256 must be 64 hex characters")
        digest = bytes.fromhex(key_hash)
    elif isinstance(key, str) and key:
        digest = _digest(key)
    else:
        raise InvalidInput(f"API_KEYS_FILE entry {i} needs 'key' or 'key_sha256'")
    return digest, User(id=user_id, roles=frozenset(roles), tier=tier)


def _parse_keys_file(path: Path, config: AuthConfig) -> dict[bytes, User]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidInput(f"API_KEYS_FILE {path} cannot be read as UTF-8 YAML") from exc
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise InvalidInput(f"API_KEYS_FILE {path} must hold a non-empty 'keys' list")
    return dict(_parse_entry(i, entry, config) for i, entry in enumerate(entries))


def _single_user_key(config: AuthConfig) -> tuple[str, str]:
    """The single-user key and a description of where it came from (never the key itself)."""
    if config.single_user_api_key:
        return config.single_user_api_key, "env SINGLE_USER_API_KEY"
    key_file = config.data_dir / KEY_FILE_NAME
    if key_file.is_file():
        return key_file.read_text(encoding="utf-8").strip(), f"file {key_file}"
    config.data_dir.mkdir(parents=True, exist_ok=True)
    key = "tldw-" + secrets.token_urlsafe(32)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    return key, f"file {key_file} (generated now)"


def load_key_store(config: AuthConfig) -> APIKeyStore:
    admin = User(id=SINGLE_USER_ID, roles=frozenset({"user", "admin"}), tier=config.default_tier)
    if config.api_keys_file is not None:
        users = _parse_keys_file(config.api_keys_file, config)
        source = f"multi-user: {len(users)} keys from {config.api_keys_file}"
        if config.single_user_api_key:
            users[_digest(config.single_user_api_key)] = admin
            source += " + env SINGLE_USER_API_KEY (admin)"
        return APIKeyStore(users, source)
    key, where = _single_user_key(config)
    return APIKeyStore({_digest(key): admin}, f"single-user: API key from {where}")
