"""API-key store: single-user (configured or generated key) and multi-user (YAML keys file)."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
import yaml

from tldw_Server_API.app.core.AuthNZ.api_keys import KEY_FILE_NAME, SINGLE_USER_ID, APIKeyStore, User, load_key_store
from tldw_Server_API.app.core.config import AuthConfig
from tldw_Server_API.app.core.errors import AuthenticationFailed, InvalidInput

KEY = "configured-key-0123456789"


def _keys_file(tmp_path: Path, entries: object) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": entries}), encoding="utf-8")
    return path


def test_single_user_key_from_config_is_admin(tmp_path: Path) -> None:
    store = load_key_store(AuthConfig(single_user_api_key=KEY, api_keys_file=None, data_dir=tmp_path))
    user = store.authenticate(KEY)
    assert user == User(id=SINGLE_USER_ID, roles=frozenset({"user", "admin"}))
    assert user.is_admin
    assert len(store) == 1
    assert not (tmp_path / KEY_FILE_NAME).exists()
    assert KEY not in store.source


def test_generated_key_is_private_and_reused(tmp_path: Path) -> None:
    config = AuthConfig(single_user_api_key=None, api_keys_file=None, data_dir=tmp_path / "data")
    first = load_key_store(config)
    key_file = tmp_path / "data" / KEY_FILE_NAME
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text(encoding="utf-8").strip()
    assert len(key) >= 32
    assert first.authenticate(key).is_admin
    assert key not in first.source

    second = load_key_store(config)
    assert key_file.read_text(encoding="utf-8").strip() == key
    assert second.authenticate(key).id == SINGLE_USER_ID
    assert key not in second.source


def test_each_data_dir_generates_its_own_key(tmp_path: Path) -> None:
    keys = []
    for name in ("a", "b"):
        load_key_store(AuthConfig(single_user_api_key=None, api_keys_file=None, data_dir=tmp_path / name))
        keys.append((tmp_path / name / KEY_FILE_NAME).read_text(encoding="utf-8").strip())
    assert keys[0] != keys[1]


def test_keys_file_maps_keys_to_users_and_roles(tmp_path: Path) -> None:
    path = _keys_file(tmp_path, [
        {"key": "alice-key", "user_id": "alice"},
        {"key": "bob-key", "user_id": "bob_2", "roles": ["user", "admin"]},
        {"key_sha256": hashlib.sha256(b"carol-key").hexdigest(), "user_id": "carol-x", "roles": ["user"]},
    ])
    store = load_key_store(AuthConfig(single_user_api_key=None, api_keys_file=path, data_dir=tmp_path))
    assert len(store) == 3
    alice, bob, carol = (store.authenticate(k) for k in ("alice-key", "bob-key", "carol-key"))
    assert alice == User("alice", frozenset({"user"})) and not alice.is_admin
    assert bob == User("bob_2", frozenset({"user", "admin"})) and bob.is_admin
    assert carol == User("carol-x", frozenset({"user"}))
    for secret in ("alice-key", "bob-key", "carol-key"):
        assert secret not in store.source
    assert not (tmp_path / KEY_FILE_NAME).exists()  # multi-user mode generates nothing


def test_keys_file_plus_configured_key_adds_the_admin(tmp_path: Path) -> None:
    path = _keys_file(tmp_path, [{"key": "alice-key", "user_id": "alice"}])
    store = load_key_store(AuthConfig(single_user_api_key=KEY, api_keys_file=path, data_dir=tmp_path))
    assert store.authenticate(KEY).id == SINGLE_USER_ID
    assert store.authenticate("alice-key").id == "alice"
    assert KEY not in store.source and "alice-key" not in store.source


@pytest.mark.parametrize("presented", [None, "", "wrong", KEY + " ", KEY[:-1], KEY.upper()])
def test_wrong_or_missing_key_fails(tmp_path: Path, presented: str | None) -> None:
    store = load_key_store(AuthConfig(single_user_api_key=KEY, api_keys_file=None, data_dir=tmp_path))
    with pytest.raises(AuthenticationFailed) as info:
        store.authenticate(presented)
    assert info.value.code == "invalid_api_key"


def test_empty_store_authenticates_nobody() -> None:
    with pytest.raises(AuthenticationFailed):
        APIKeyStore({}, "empty").authenticate("anything")


@pytest.mark.parametrize(
    "body",
    [
        "keys: [unclosed",
        "",
        "keys: []",
        "keys: {a: 1}",
        "- key: k\n  user_id: u\n",
        "keys: [just-a-string]",
        "keys: [{key: k, user_id: a/b}]",
        f"keys: [{{key: k, user_id: {'u' * 65}}}]",
        "keys: [{key: k, user_id: ''}]",
        "keys: [{key: k}]",
        "keys: [{key: k, user_id: u, roles: [root]}]",
        "keys: [{key: k, user_id: u, roles: [user, superuser]}]",
        "keys: [{user_id: u}]",
        "keys: [{key: '', user_id: u}]",
    ],
    ids=["invalid-yaml", "empty-file", "empty-list", "keys-not-list", "top-level-list", "entry-not-mapping",
         "slash-user-id", "65-char-user-id", "empty-user-id", "missing-user-id", "unknown-role",
         "one-unknown-role", "missing-key", "empty-key"],
)
def test_bad_keys_files_are_rejected(tmp_path: Path, body: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(InvalidInput):
        load_key_store(AuthConfig(single_user_api_key=None, api_keys_file=path, data_dir=tmp_path))


def test_missing_keys_file_is_rejected(tmp_path: Path) -> None:
    config = AuthConfig(single_user_api_key=None, api_keys_file=tmp_path / "nope.yaml", data_dir=tmp_path)
    with pytest.raises(InvalidInput):
        load_key_store(config)


def test_64_char_user_id_is_accepted(tmp_path: Path) -> None:
    path = _keys_file(tmp_path, [{"key": "k", "user_id": "u" * 64}])
    store = load_key_store(AuthConfig(single_user_api_key=None, api_keys_file=path, data_dir=tmp_path))
    assert store.authenticate("k").id == "u" * 64


@pytest.mark.parametrize(
    "body",
    [
        b"keys: [{key: k, user_id: u, roles: 5}]",
        b"keys: [{key: k, user_id: u, roles: [{a: 1}]}]",
        b"keys: [{key_sha256: not-hex, user_id: u}]",
        b"keys: [{key_sha256: abcd, user_id: u}]",
        b"keys: [{key: k, user_id: u}]\n# \xff\xfe not utf-8\n",
    ],
    ids=["roles-int", "roles-unhashable", "sha-not-hex", "sha-wrong-length", "not-utf8"],
)
def test_malformed_values_raise_invalid_input(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "keys.yaml"
    path.write_bytes(body)
    with pytest.raises(InvalidInput):
        load_key_store(AuthConfig(single_user_api_key=None, api_keys_file=path, data_dir=tmp_path))


@pytest.mark.parametrize("user_id", [None, "abc\n"], ids=["null", "trailing-newline"])
def test_user_id_must_be_a_real_id(tmp_path: Path, user_id: str | None) -> None:
    path = _keys_file(tmp_path, [{"key": "k", "user_id": user_id}])
    with pytest.raises(InvalidInput):
        load_key_store(AuthConfig(single_user_api_key=None, api_keys_file=path, data_dir=tmp_path))
