"""Settings: defaults, environment, the YAML file named by TLDW_CONFIG_FILE, validation and the
derived per-module configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from tldw_Server_API.app.core.config import BUNDLED_MODEL_ID, Settings, env_var_table


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Settings field comes from the outer environment, and no config file is read unless named."""
    fields = set(Settings.model_fields)
    for name in list(os.environ):
        if name.lower() in fields:
            monkeypatch.delenv(name)
    monkeypatch.setenv("TLDW_CONFIG_FILE", str(tmp_path / "no-such-config.yaml"))


def test_defaults() -> None:
    settings = Settings()
    assert settings.embeddings_dimension_policy == "reduce"
    assert settings.embeddings_models == [
        f"huggingface:{BUNDLED_MODEL_ID}", f"onnx:{BUNDLED_MODEL_ID}@fp32", f"onnx:{BUNDLED_MODEL_ID}@int8"
    ]
    assert settings.embeddings_max_inputs == 2048
    assert settings.single_user_api_key is None
    assert settings.tldw_port == 8000


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ("EMBEDDINGS_DIMENSION_POLICY", "embeddings_dimension_policy", ("pad", "pad")),
        ("EMBEDDINGS_MODELS", "embeddings_models", ("huggingface:a, huggingface:b", ["huggingface:a",
                                                                                     "huggingface:b"])),
        ("EMBEDDINGS_MODELS", "embeddings_models", (" huggingface:a ,, ", ["huggingface:a"])),
        ("EMBEDDINGS_MAX_INPUTS", "embeddings_max_inputs", ("16", 16)),
        ("EMBEDDINGS_TRUNCATE", "embeddings_truncate", ("true", True)),
        ("TLDW_PORT", "tldw_port", ("9001", 9001)),
        ("embeddings_device", "embeddings_device", ("cuda:1", "cuda:1")),
        ("TIKTOKEN_CACHE_DIR", "tiktoken_cache_dir", ("/opt/tk", Path("/opt/tk"))),
    ],
)
def test_env_overrides_defaults(
    monkeypatch: pytest.MonkeyPatch, env: str, field: str, expected: tuple[str, object]
) -> None:
    raw, value = expected
    monkeypatch.setenv(env, raw)
    assert getattr(Settings(), field) == value


def test_secret_key_from_env_is_hidden_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SINGLE_USER_API_KEY", "env-secret-key-123")
    settings = Settings()
    assert settings.auth_config().single_user_api_key == "env-secret-key-123"
    assert "env-secret-key-123" not in repr(settings)


def test_yaml_config_file_is_read_and_env_beats_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "embeddings_dimension_policy: ignore\n"
        "embeddings_max_inputs: 7\n"
        "embeddings_models: [huggingface:x, local_api:y]\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("TLDW_CONFIG_FILE", str(config))
    from_file = Settings()
    assert from_file.embeddings_dimension_policy == "ignore"
    assert from_file.embeddings_max_inputs == 7
    assert from_file.embeddings_models == ["huggingface:x", "local_api:y"]

    monkeypatch.setenv("EMBEDDINGS_DIMENSION_POLICY", "pad")
    mixed = Settings()
    assert mixed.embeddings_dimension_policy == "pad"
    assert mixed.embeddings_max_inputs == 7
    assert Settings(embeddings_dimension_policy="reduce").embeddings_dimension_policy == "reduce"


def test_yaml_comma_string_is_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("embeddings_models: 'huggingface:a,huggingface:b'\n", encoding="utf-8")
    monkeypatch.setenv("TLDW_CONFIG_FILE", str(config))
    assert Settings().embeddings_models == ["huggingface:a", "huggingface:b"]


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("EMBEDDINGS_DIMENSION_POLICY", "bogus"),
        ("EMBEDDINGS_MAX_INPUTS", "0"),
        ("EMBEDDINGS_MAX_INPUTS", "many"),
        ("TLDW_WORKERS", "0"),
        ("EMBEDDINGS_TORCH_THREADS", "-1"),
        ("MAX_REQUEST_BYTES", "10"),
    ],
)
def test_invalid_values_raise(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert env.lower() in str(info.value)


def test_model_dir_defaults_under_the_data_dir_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(tldw_data_dir=Path("data"))
    catalog = settings.model_catalog_config()
    assert catalog.model_dir.is_absolute()
    assert catalog.model_dir == (tmp_path / "data" / "models").resolve()
    assert settings.data_dir == (tmp_path / "data").resolve()
    assert settings.auth_config().data_dir == settings.data_dir


def test_explicit_model_dir_wins(tmp_path: Path) -> None:
    settings = Settings(tldw_data_dir=tmp_path / "data", embeddings_model_dir=tmp_path / "store" / ".." / "models")
    assert settings.model_catalog_config().model_dir == (tmp_path / "models").resolve()


def test_derived_configs_carry_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        tldw_data_dir=tmp_path, embeddings_models="huggingface:a,huggingface:b", embeddings_default_model="a",
        embeddings_max_inputs=5, embeddings_max_tokens_per_request=99, embeddings_dimension_policy="pad",
        embeddings_truncate=True, embeddings_local_batch_size=3, embeddings_torch_threads=2,
        embeddings_onnx_threads=4, embeddings_onnx_quantize="int8",
        embeddings_device="cuda", log_level="debug", log_json=True, single_user_api_key="k",
    )
    catalog = settings.model_catalog_config()
    assert catalog.models == ("huggingface:a", "huggingface:b") and catalog.default_model == "a"
    api = settings.embeddings_api_config()
    assert (api.max_inputs, api.max_tokens_per_request, api.dimension_policy, api.truncate) == (5, 99, "pad", True)
    engine = settings.engine_config()
    hf, onnx = engine.huggingface, engine.onnx
    assert (hf.torch_threads, hf.device) == (2, "cuda")
    assert (onnx.threads, onnx.quantize) == (4, "int8")
    assert engine.batching.max_batch_rows == 3
    assert engine.catalog == catalog
    log = settings.logging_config()
    assert (log.level, log.json) == ("DEBUG", True)
    auth = settings.auth_config()
    assert (auth.single_user_api_key, auth.api_keys_file) == ("k", None)


def test_env_var_table_lists_every_field() -> None:
    table = env_var_table()
    names = [row[0] for row in table]
    flat = [name.upper() for name in Settings.model_fields if name != "rag"]
    assert [n for n in names if not n.startswith("RAG__")] == flat
    assert {"RAG__VECTOR_STORE_TYPE", "RAG__PGVECTOR__DSN", "RAG__PGVECTOR__EF_SEARCH"} <= set(names)
    assert len(set(names)) == len(names)
    for name, default, description in table:
        assert name.isupper() and description.strip(), name
        assert isinstance(default, str)
    rows = {row[0]: row[1] for row in table}
    assert rows["EMBEDDINGS_DIMENSION_POLICY"] == "reduce"
    assert rows["SINGLE_USER_API_KEY"] == "unset"
    assert rows["EMBEDDINGS_MODELS"].split(",")[0] == f"huggingface:{BUNDLED_MODEL_ID}"
    assert {"TLDW_DATA_DIR", "API_KEYS_FILE", "TIKTOKEN_CACHE_DIR", "EMBEDDINGS_MODEL_DIR"} <= set(rows)


def test_nested_rag_and_json_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG__VECTOR_STORE_TYPE", "pgvector")
    monkeypatch.setenv("RAG__PGVECTOR__DSN", "postgresql://u@h/db")
    monkeypatch.setenv("EMBEDDINGS_FALLBACK_CHAIN", '{"openai": ["onnx"]}')
    monkeypatch.setenv("EMBEDDINGS_DENIED_MODELS", "text-*, b")
    settings = Settings()
    storage = settings.storage_config()
    assert (storage.vector_store_type, storage.pgvector_dsn) == ("pgvector", "postgresql://u@h/db")
    policy = settings.resilience_config().policy
    assert policy.fallback_chain == {"openai": ["onnx"]}
    assert policy.denied_models == ("text-*", "b")
