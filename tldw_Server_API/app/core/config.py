"""The one settings object: the only code that reads the environment or `Config_Files/`.

Each field's env var is its upper-cased name; values come from (highest first) constructor
arguments, the environment, the YAML file named by `TLDW_CONFIG_FILE`, then the defaults here.
Modules never see `Settings`: they get the small frozen `*Config` dataclasses built from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG_FILE = Path("Config_Files/embeddings_production_config.yaml")  # relative to the repo root
DEFAULT_PROMPTS_FILE = REPO_ROOT / "Config_Files" / "Prompts" / "embeddings.prompts.yaml"
BUNDLED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


@dataclass(frozen=True)
class AuthConfig:
    single_user_api_key: str | None
    api_keys_file: Path | None
    data_dir: Path


@dataclass(frozen=True)
class LoggingConfig:
    level: str
    json: bool


@dataclass(frozen=True)
class EmbeddingsAPIConfig:
    max_inputs: int
    max_tokens_per_request: int
    dimension_policy: Literal["reduce", "pad", "ignore"]
    truncate: bool


@dataclass(frozen=True)
class ModelCatalogConfig:
    models: tuple[str, ...]          # "provider:model" entries served by default
    default_model: str
    model_dir: Path                  # storage root: every model path must resolve inside it


@dataclass(frozen=True)
class HuggingFaceConfig:
    torch_threads: int               # 0: torch's own default
    device: str


@dataclass(frozen=True)
class OnnxConfig:
    threads: int                     # 0: onnxruntime's own default
    quantize: Literal["fp32", "int8"]


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_tokens: int            # token budget of one merged model call
    max_wait_ms: float               # most a batch waits for more requests to arrive
    quiet_ms: float                  # ...stopping early once none arrived for this long
    max_queue_texts: int             # queued texts per model before 429 overloaded
    max_padded_tokens: int           # rows x longest row of one forward pass
    max_batch_rows: int              # most texts in one forward pass


@dataclass(frozen=True)
class EngineConfig:
    catalog: ModelCatalogConfig
    huggingface: HuggingFaceConfig
    onnx: OnnxConfig
    batching: BatchingConfig


class Settings(BaseSettings):
    """Every runtime option of the server. The README's configuration table mirrors these fields."""

    model_config = SettingsConfigDict(
        case_sensitive=False,
        extra="ignore",
        env_nested_delimiter="__",
        populate_by_name=True,
    )

    # --- host -------------------------------------------------------------------------------
    tldw_config_file: Path = Field(
        DEFAULT_CONFIG_FILE, description="Optional YAML file of settings (relative paths: from the repo root)."
    )
    tldw_data_dir: Path = Field(Path("./Databases"), description="Directory for every file the server writes.")
    tldw_host: str = Field("127.0.0.1", description="Interface `python -m tldw_Server_API` binds.")
    tldw_port: int = Field(8000, description="Port `python -m tldw_Server_API` binds.")
    tldw_workers: int = Field(1, ge=1, description="Uvicorn worker processes (each loads its own models).")
    log_level: str = Field("INFO", description="loguru level: DEBUG, INFO, WARNING, ERROR.")
    log_json: bool = Field(False, description="Write logs as JSON lines instead of text.")
    max_request_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest request body accepted on JSON routes (413 above)."
    )

    # --- auth -------------------------------------------------------------------------------
    single_user_api_key: SecretStr | None = Field(
        None,
        description="The admin key of single-user mode. Unset (and no API_KEYS_FILE): one is generated "
        "into `$TLDW_DATA_DIR/single_user_api_key` on first start.",
    )
    api_keys_file: Path | None = Field(
        None, description="YAML file of API keys -> user id + roles (multi-user mode)."
    )

    # --- embeddings API ---------------------------------------------------------------------
    embeddings_models: CommaList = Field(
        [f"huggingface:{BUNDLED_MODEL_ID}", f"onnx:{BUNDLED_MODEL_ID}@fp32", f"onnx:{BUNDLED_MODEL_ID}@int8"],
        description="Comma-separated `provider:model` entries the server offers (bare ids resolve here).",
    )
    embeddings_default_model: str = Field(
        BUNDLED_MODEL_ID, description="Model used where a caller names none (media embedding)."
    )
    embeddings_model_dir: Path | None = Field(
        None, description="Model storage root (default `$TLDW_DATA_DIR/models`); model paths must stay inside."
    )
    embeddings_max_inputs: int = Field(2048, ge=1, description="Most inputs in one /embeddings request.")
    embeddings_max_tokens_per_request: int = Field(
        300_000, ge=1, description="Cap on the summed tokens of one request (413 above)."
    )
    embeddings_dimension_policy: Literal["reduce", "pad", "ignore"] = Field(
        "reduce", description="How `dimensions` applies to models without native support: reduce, pad or ignore."
    )
    embeddings_truncate: bool = Field(
        False, description="Truncate inputs over the model's max tokens instead of answering 400."
    )
    embeddings_local_batch_size: int = Field(
        256, ge=1, description="Most texts in one forward pass of a local model (huggingface, onnx)."
    )
    embeddings_local_batch_tokens: int = Field(
        1024, ge=16, description="Padded-token budget (rows x longest row) of one local forward pass; "
        "texts are sorted by token length first, so short texts batch wide and long ones narrow."
    )
    embeddings_torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 keeps torch's default.")
    embeddings_device: str = Field("cpu", description="torch device for local models (cpu, cuda, cuda:1).")
    embeddings_onnx_quantize: Literal["fp32", "int8"] = Field(
        "fp32", description="ONNX variant of a bare `onnx:<model>` id; `<model>@fp32` / `@int8` pick one explicitly."
    )
    embeddings_onnx_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 keeps its default.")
    embeddings_batch_max_tokens: int = Field(
        8192, ge=1, description="Micro-batcher: token budget of one merged model call across concurrent requests."
    )
    embeddings_batch_max_wait_ms: float = Field(
        20.0, ge=0, description="Micro-batcher: most time a batch waits for more requests to join it (0: never)."
    )
    embeddings_batch_quiet_ms: float = Field(
        2.0, ge=0, description="Micro-batcher: stop waiting once no request arrived for this long."
    )
    embeddings_batch_queue_size: int = Field(
        8192, ge=1, description="Micro-batcher: queued texts per model before requests get 429 `overloaded`."
    )
    tiktoken_cache_dir: Path | None = Field(
        None,
        description="Directory holding tiktoken's cl100k_base file, used to decode token-array inputs. "
        "The install script provisions `.cache/tiktoken`.",
    )

    @field_validator("embeddings_models", mode="before")
    @classmethod
    def _comma_lists(cls, value: Any) -> Any:
        return _split_commas(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 (called by keyword)
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = REPO_ROOT / os.environ.get("TLDW_CONFIG_FILE", str(DEFAULT_CONFIG_FILE))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    # --- derived, per-module configs ----------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.tldw_data_dir.expanduser().resolve()

    def auth_config(self) -> AuthConfig:
        key = self.single_user_api_key.get_secret_value() if self.single_user_api_key else None
        return AuthConfig(single_user_api_key=key, api_keys_file=self.api_keys_file, data_dir=self.data_dir)

    def logging_config(self) -> LoggingConfig:
        return LoggingConfig(level=self.log_level.upper(), json=self.log_json)

    def embeddings_api_config(self) -> EmbeddingsAPIConfig:
        return EmbeddingsAPIConfig(
            max_inputs=self.embeddings_max_inputs,
            max_tokens_per_request=self.embeddings_max_tokens_per_request,
            dimension_policy=self.embeddings_dimension_policy,
            truncate=self.embeddings_truncate,
        )

    def model_catalog_config(self) -> ModelCatalogConfig:
        model_dir = self.embeddings_model_dir or self.data_dir / "models"
        return ModelCatalogConfig(
            models=tuple(self.embeddings_models),
            default_model=self.embeddings_default_model,
            model_dir=model_dir.expanduser().resolve(),
        )

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            catalog=self.model_catalog_config(),
            huggingface=HuggingFaceConfig(
                torch_threads=self.embeddings_torch_threads,
                device=self.embeddings_device,
            ),
            onnx=OnnxConfig(
                threads=self.embeddings_onnx_threads,
                quantize=self.embeddings_onnx_quantize,
            ),
            batching=BatchingConfig(
                max_batch_tokens=self.embeddings_batch_max_tokens,
                max_wait_ms=self.embeddings_batch_max_wait_ms,
                quiet_ms=self.embeddings_batch_quiet_ms,
                max_queue_texts=self.embeddings_batch_queue_size,
                max_padded_tokens=self.embeddings_local_batch_tokens,
                max_batch_rows=self.embeddings_local_batch_size,
            ),
        )


def _show_default(default: Any) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list):
        return ",".join(default)
    if isinstance(default, Path) and not default.is_absolute():
        return f"./{default}"
    return str(default)


def env_var_table() -> list[tuple[str, str, str]]:
    """(ENV_VAR, default, description) for every field: the README's configuration table."""
    rows = []
    for name, field in Settings.model_fields.items():
        rows.append((name.upper(), _show_default(field.default), field.description or ""))
    return rows


def env_var_markdown() -> str:
    """The README's configuration table, generated (a test checks the README carries it verbatim)."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, default, description in env_var_table():
        lines.append(f"| `{name}` | `{default}` | {description} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tldw_Server_API.app.core.config  -> the README table
    print(env_var_markdown())
