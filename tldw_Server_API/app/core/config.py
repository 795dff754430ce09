"""The one settings object: the only code that reads the environment or `Config_Files/`.

Each field's env var is its upper-cased name; values come from (highest first) constructor
arguments, the environment, the YAML file named by `TLDW_CONFIG_FILE`, then the defaults here.
Modules never see `Settings`: they get the small frozen `*Config` dataclasses built from it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
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
JsonDict = Annotated[dict[str, Any], NoDecode]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


@dataclass(frozen=True)
class AuthConfig:
    single_user_api_key: str | None
    api_keys_file: Path | None
    data_dir: Path
    default_tier: str = "enterprise"
    tiers: frozenset[str] = frozenset({"free", "premium", "enterprise"})


@dataclass(frozen=True)
class TierLimits:
    """A user tier's allowance for media embedding jobs; 0 means no limit."""

    daily_chunks: int = 0       # chunks embedded per UTC day, over the jobs created that day
    concurrent_jobs: int = 0    # queued or running jobs at once


DEFAULT_TIER_LIMITS: dict[str, dict[str, int]] = {
    "free": {"daily_chunks": 1000, "concurrent_jobs": 2},
    "premium": {"daily_chunks": 10000, "concurrent_jobs": 8},
    "enterprise": {"daily_chunks": 0, "concurrent_jobs": 0},
}


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
    long_input: Literal["truncate", "mean"] = "truncate"
    aliases: Mapping[str, str] = dataclass_field(default_factory=dict)   # a requested name -> the served model it runs


@dataclass(frozen=True)
class ModelCatalogConfig:
    models: tuple[str, ...]          # "provider:model" entries served by default
    default_model: str
    model_dir: Path                  # storage root: every model path must resolve inside it


@dataclass(frozen=True)
class HuggingFaceConfig:
    torch_threads: int               # 0: the cores this process may run on
    device: str
    unpadded: bool = True            # BERT-family encoders run their per-token work on real tokens only


@dataclass(frozen=True)
class OnnxConfig:
    threads: int                     # 0: onnxruntime's own default
    quantize: Literal["fp32", "int8"]


@dataclass(frozen=True)
class EngineSelectionConfig:
    engine: Literal["auto", "huggingface", "onnx"]   # what a bare local model id runs on; auto: measured
    precision: Literal["exact", "fast"]               # fast: reduced-precision paths within the bar may win
    min_mean_cosine: float                            # the quality bar of a reduced-precision path ...
    min_cosine: float                                 # ... against fp32 on the calibration texts


@dataclass(frozen=True)
class BatchingConfig:
    max_wait_ms: float               # most a pass under its budget waits for more rows (0: never)
    max_queue_texts: int             # queued texts per model before 429 overloaded
    max_padded_tokens: int           # rows x longest row of one forward pass
    max_batch_rows: int              # most texts in one forward pass
    parallel_passes: int = 0         # passes of one model running at once; 0: the provider's choice
    inline_pass_tokens: int = 0      # a lone pass this small (rows x longest) runs on the event loop's thread


@dataclass(frozen=True)
class ModelManagerConfig:
    max_models_in_memory: int        # loaded models per local provider (LRU beyond)
    max_memory_mb: int               # estimated weights memory per local provider; 0: no cap
    unload_timeout_s: float          # idle models unload after this; 0: never
    revisions: dict[str, str]        # model id -> pinned revision (mismatch refused)
    trusted_remote_code: tuple[str, ...]  # id patterns (trailing *) allowed trust_remote_code
    auto_download: bool              # fetch from the hub when not found locally
    preload: tuple[str, ...]         # provider:model warmed at startup


@dataclass(frozen=True)
class RemoteAPIConfig:
    """One OpenAI-compatible upstream (OpenAI itself, or a local server)."""

    base_url: str | None
    api_key: str | None
    pool_size: int                   # connections per base URL
    timeout_s: float                 # whole-request timeout
    max_batch_size: int              # inputs per upstream request; larger requests are split


@dataclass(frozen=True)
class EngineConfig:
    catalog: ModelCatalogConfig
    huggingface: HuggingFaceConfig
    onnx: OnnxConfig
    batching: BatchingConfig
    models: ModelManagerConfig
    openai: RemoteAPIConfig
    local_api: RemoteAPIConfig
    prompts_file: Path               # Qwen3-style instruction prompts
    selection: EngineSelectionConfig = EngineSelectionConfig("auto", "exact", 0.99, 0.975)


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool
    ttl_s: float
    max_size: int
    cleanup_interval_s: float
    daemon: bool                     # run the periodic cleaner
    redis_url: str | None            # L2 shared by server processes; None: in-process only
    redis_prefix: str


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int           # consecutive failures that open the circuit
    recovery_timeout_s: float        # open -> half-open after this
    half_open_probes: int            # successes in half-open that close it again


@dataclass(frozen=True)
class RetryConfig:
    max_retries: int
    base_delay_s: float
    max_delay_s: float


@dataclass(frozen=True)
class PolicyConfig:
    enforce: bool
    strict: bool                     # no admin bypass
    allowed_providers: tuple[str, ...]
    allowed_models: tuple[str, ...]
    denied_providers: tuple[str, ...]
    denied_models: tuple[str, ...]
    fallback_chain: dict[str, list[str]]
    fallback_model_map: dict[str, dict[str, str]]  # "provider:model" -> {fallback provider or *: model}
    allow_fallback_with_header: bool


@dataclass(frozen=True)
class RateLimitConfig:
    enabled: bool
    global_rps: float
    global_burst: int
    tenant_rps: float                # 0: no per-user limit
    tenant_burst: int
    redis_url: str | None
    redis_prefix: str


@dataclass(frozen=True)
class ResilienceConfig:
    cache: CacheConfig
    breaker: BreakerConfig
    retry: RetryConfig
    policy: PolicyConfig
    rate_limit: RateLimitConfig


@dataclass(frozen=True)
class ChunkingDefaults:
    method: Literal["words", "sentences", "paragraphs", "tokens"]
    max_size: int                    # 0: the embedding model's window (method `tokens` only)
    overlap: int
    max_allowed_size: int
    max_chunks: int = 50_000         # per media item / upload: more is a 413, before anything is stored


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path
    vector_store_type: Literal["chroma", "pgvector"]
    pgvector_dsn: str | None
    pgvector_ef_search: int
    chroma_force_stub: bool
    jobs_db_url: str                 # SQLAlchemy URL of jobs, vector-store metadata and batches
    max_upload_bytes: int
    chunking: ChunkingDefaults
    pipeline_concurrency: int
    pipeline_queue_size: int
    user_quota_bytes: int = 0        # live media text per user; 0: no quota
    max_pages: int = 5000            # pages read of one PDF
    max_unpacked_bytes: int = 256 * 2**20   # inflated members of one DOCX / EPUB / ODT
    chroma_url: str | None = None    # a Chroma server (client/server mode); None: embedded files
    chroma_token: str | None = None


@dataclass(frozen=True)
class PipelineConfig:
    mode: Literal["embedded", "redis"]
    redis_url: str
    prefix: str                      # of every pipeline key
    max_retries: int
    lease_seconds: float
    workers_min: int
    workers_max: int
    backpressure_depth: int
    backpressure_age_seconds: float
    signing_secret: str | None = None           # HMAC secret every pipeline message is signed with
    signing_max_age_seconds: float = 86_400.0
    dlq_encryption_key: str | None = None       # AES-GCM key list of dead-letter payloads, newest first


class PgvectorSettings(BaseModel):
    dsn: str | None = Field(None, description="PostgreSQL DSN of the pgvector store (`postgresql://...`).")
    ef_search: int = Field(200, ge=1, description="`hnsw.ef_search` per query (recall vs speed; 100 gave recall@10 "
                           "0.94-0.97 on 100k chunks here, 200 gives 0.985 for ~0.5 ms more).")


class ChromaSettings(BaseModel):
    url: str | None = Field(
        None, description="A Chroma server (`chroma run`), e.g. `http://chroma:8000`: client/server mode, one store "
        "every process reaches (each user is a database of the default tenant). Unset: embedded files per user."
    )
    token: SecretStr | None = Field(None, description="Bearer token sent to the Chroma server, if it wants one.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("RAG__CHROMA__URL must be an http:// or https:// URL")
        return value


class RAGSettings(BaseModel):
    vector_store_type: Literal["chroma", "pgvector"] = Field(
        "chroma", description="Vector store of media chunks: chroma (embedded, or a server with `RAG__CHROMA__URL`) "
        "or pgvector."
    )
    pgvector: PgvectorSettings = Field(default_factory=lambda: PgvectorSettings.model_validate({}))
    chroma: ChromaSettings = Field(default_factory=lambda: ChromaSettings.model_validate({}))


def _json_value(value: Any) -> Any:
    if isinstance(value, str):
        return json.loads(value) if value.strip() else {}
    return value


def _model_map(raw: dict[str, Any]) -> dict[str, dict[str, str]]:
    mapped: dict[str, dict[str, str]] = {}
    for source, target in raw.items():
        if isinstance(target, dict):
            mapped[str(source)] = {str(k): str(v) for k, v in target.items()}
        else:
            mapped[str(source)] = {"*": str(target)}
    return mapped


DEFAULT_FALLBACK_CHAIN: dict[str, list[str]] = {
    "openai": ["huggingface", "onnx", "local_api"],
    "local_api": ["huggingface", "onnx"],
    "huggingface": ["onnx"],
    "onnx": ["huggingface"],
}


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
    tldw_base_url: str = Field(
        "http://127.0.0.1:8000", description="The server the command-line tools (`python -m tldw_Server_API.ops`) "
        "talk to."
    )
    tldw_api_key: SecretStr | None = Field(
        None, description="The key the command-line tools send; unset: `SINGLE_USER_API_KEY`, else the single-user "
        "key file of `TLDW_DATA_DIR`."
    )
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
        None, description="YAML file of API keys -> user id + roles (+ optional tier) (multi-user mode)."
    )
    embeddings_tier_limits: JsonDict = Field(
        DEFAULT_TIER_LIMITS, description="JSON: tier -> `{daily_chunks, concurrent_jobs}` allowance of media "
        "embedding jobs (0: no limit). A job past the daily chunk quota fails with `quota_exceeded`; a start "
        "past the concurrent-job cap is a 429 with Retry-After."
    )
    embeddings_default_tier: str = Field(
        "enterprise", description="Tier of the single-user key and of API_KEYS_FILE entries that name none "
        "(`enterprise` has no limits by default)."
    )

    # --- embeddings API ---------------------------------------------------------------------
    embeddings_models: CommaList = Field(
        [f"huggingface:{BUNDLED_MODEL_ID}", f"onnx:{BUNDLED_MODEL_ID}@fp32", f"onnx:{BUNDLED_MODEL_ID}@int8"],
        description="Comma-separated `provider:model` entries the server offers (bare ids resolve here).",
    )
    embeddings_default_model: str = Field(
        BUNDLED_MODEL_ID,
        description="Model used where a caller names none: media embedding, RAG queries, vector stores. A bare "
        "id (the default: the bundled MiniLM) runs on the engine EMBEDDINGS_ENGINE picks for it on this machine, "
        "as a client's bare id does; a `huggingface:`/`onnx:` prefix pins one. `<id>` and `<id>@fp32` share one "
        "media collection (their vectors are the same).",
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
        True, description="`POST /embeddings`: truncate inputs longer than the model's window and say so in the "
        "`X-Embeddings-Truncated` header (as TEI, Infinity and sentence-transformers do); false: answer 400 "
        "`input_too_long`. A request's `truncate` field overrides it."
    )
    embeddings_long_input: Literal["truncate", "mean"] = Field(
        "truncate", description="`POST /embeddings`: what a long input becomes. truncate: its first window; mean: "
        "the token-weighted mean of its window-sized pieces, renormalised (the whole text counts; one forward "
        "pass per piece). A request's `long_input` field overrides it."
    )
    embeddings_local_batch_size: int = Field(
        256, ge=1, description="Most texts in one forward pass of a local model (huggingface, onnx)."
    )
    embeddings_local_batch_tokens: int = Field(
        1024, ge=16, description="Padded-token budget (rows x longest row) of one local forward pass; "
        "texts are sorted by token length first, so short texts batch wide and long ones narrow."
    )
    embeddings_torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads of the huggingface provider on CPU, shared among the passes "
        "running (a lone pass takes them all); 0: the cores this process may run on."
    )
    embeddings_device: str = Field("cpu", description="torch device for local models (cpu, cuda, cuda:1).")
    embeddings_unpadded_encoder: bool = Field(
        True, description="huggingface: BERT-family encoders (BERT, MiniLM, RoBERTa, XLM-R) run their per-token "
        "layers on the real tokens of a pass only, padding only inside attention: the same vectors, and a pass "
        "of mixed lengths costs about its real tokens. Other models always run as transformers runs them."
    )
    embeddings_onnx_quantize: Literal["fp32", "int8"] = Field(
        "fp32", description="ONNX variant of a bare `onnx:<model>` id; `<model>@fp32` / `@int8` pick one explicitly."
    )
    embeddings_onnx_threads: int = Field(
        0, ge=0, description="onnxruntime intra-op threads of one session; 0: on 2+ cores each model gets a wide "
        "session (every core) for a pass alone on the model and a single-threaded one for the 2 passes run side "
        "by side under load (weights held twice); a set count: one session of that width.")
    embeddings_engine: Literal["auto", "huggingface", "onnx"] = Field(
        "auto", description="Engine of a bare local model id (`sentence-transformers/all-MiniLM-L6-v2`; a "
        "`huggingface:`/`onnx:` prefix always pins one). auto: the fastest engine whose vectors equal torch fp32's "
        "(cosine >= 0.9999 on every calibration text), measured at start-up with the preload and recorded in "
        "`<model dir>/engine_choice.json`; until measured, onnx fp32 on a CPU, else huggingface."
    )
    embeddings_precision: Literal["exact", "fast"] = Field(
        "exact", description="The CPU's reduced-precision paths (bf16 with AVX-512 BF16/AMX, int8 with VNNI/AMX) "
        "are measured with the fp32 engines. exact: one may run a bare id only if its vectors are exact too "
        "(cosine >= 0.9999 on every calibration text). fast: also when it clears the quality bar below; its "
        "vectors go to a collection of their own. On a CPU without those instructions nothing changes."
    )
    embeddings_quality_min_mean_cosine: float = Field(
        0.99, ge=0, le=1, description="Quality bar of a reduced-precision path: mean cosine to fp32 on the "
        "calibration texts; a path below it is never a default."
    )
    embeddings_quality_min_cosine: float = Field(
        0.975, ge=0, le=1, description="Quality bar of a reduced-precision path: lowest cosine to fp32 on any "
        "calibration text; a path below it is never a default."
    )
    embeddings_batch_max_wait_ms: float = Field(
        0.0, ge=0, description="Micro-batcher: right after a forward pass, most time the next pass waits for more "
        "rows when it would run under its padded-token budget (0: never; rows that arrive during a pass join "
        "the next one anyway)."
    )
    embeddings_inference_workers: int = Field(
        0, ge=0, description="Forward passes one local model runs at once, each on its own thread with its share "
        "of the intra-op threads (a lone pass gets them all); 0: 2 on a CPU with 2+ cores (onnx: with "
        "EMBEDDINGS_ONNX_THREADS 0), else 1."
    )
    embeddings_inline_pass_tokens: int = Field(
        64, ge=0, description="A lone forward pass of a local model (nothing else running or waiting in its provider) "
        "of at most this many padded tokens (rows x longest row: a search query) runs on the event loop's thread "
        "instead of a pass thread, once that model's recent small passes took at most 25 ms (median; the first "
        "ones are timed on a pass thread): two thread hand-offs less (0.3-0.9 ms on a 2-core VM), the loop busy "
        "for that pass. 0: every pass on a pass thread."
    )
    embeddings_batch_queue_size: int = Field(
        8192, ge=1, description="Micro-batcher: queued texts per model before requests get 429 `overloaded`."
    )
    # --- model management ---------------------------------------------------------------------
    embeddings_max_models_in_memory: int = Field(
        3, ge=1, description="Loaded models per local provider; the least recently used idle one is unloaded beyond."
    )
    embeddings_max_model_memory_mb: int = Field(
        0, ge=0, description="Cap on the estimated weight memory of one local provider's models (0: none)."
    )
    embeddings_unload_timeout_seconds: float = Field(
        0, ge=0, description="Unload a local model idle this long (0: keep loaded)."
    )
    embeddings_model_aliases: JsonDict = Field(
        {}, description='JSON map of model name -> a served model, for tools that hard-code OpenAI\'s names, e.g. '
        '`{"text-embedding-3-small": "sentence-transformers/all-MiniLM-L6-v2"}`; the response names the model that '
        "ran. Aliases are listed by `GET /api/v1/models`."
    )
    embeddings_model_revisions: JsonDict = Field(
        {}, description='JSON map of model id -> pinned revision, e.g. `{"org/model": "abc123"}`; a local copy '
        "with another revision is refused."
    )
    trusted_hf_remote_code_models: CommaList = Field(
        [], description="Comma-separated model id patterns (trailing `*`) allowed to run `trust_remote_code`."
    )
    auto_download_models: bool = Field(
        True, description="Download models from the Hugging Face hub when not found locally (needs network)."
    )
    preload_embedding_models: CommaList = Field(
        ["default"], description="Comma-separated `provider:model` entries loaded and warmed at start-up, in the "
        "background (`/health` says `loading`, 503, until they are ready), with the engine each preloaded model's bare "
        "id runs on; `default` is EMBEDDINGS_DEFAULT_MODEL; empty or `none`: load on first use."
    )

    # --- remote providers -------------------------------------------------------------------
    openai_api_key: SecretStr | None = Field(None, description="API key of the `openai` provider.")
    openai_base_url: str = Field("https://api.openai.com/v1", description="Base URL of the `openai` provider.")
    embeddings_local_api_url: str | None = Field(
        None, description="Base URL of the `local_api` provider, an OpenAI-compatible server "
        "(e.g. `http://127.0.0.1:8080/v1`); unset: the provider answers 501."
    )
    embeddings_local_api_key: SecretStr | None = Field(None, description="Bearer key for the `local_api` server.")
    embeddings_connection_pool_size: int = Field(
        20, ge=1, description="Pooled HTTP connections per upstream base URL."
    )
    embeddings_request_timeout: float = Field(60.0, gt=0, description="Seconds one upstream request may take.")
    embeddings_max_batch_size: int = Field(
        2048, ge=1, description="Inputs per upstream request; larger requests are split."
    )

    # --- cache, breaker, retries --------------------------------------------------------------
    embeddings_cache_enabled: bool = Field(True, description="Cache embeddings per text.")
    embeddings_cache_ttl_seconds: float = Field(3600, gt=0, description="Lifetime of a cached embedding.")
    embeddings_cache_max_size: int = Field(5000, ge=1, description="Cached embeddings kept in process (LRU beyond).")
    embeddings_cache_cleanup_interval: float = Field(
        300, gt=0, description="Seconds between sweeps of expired cache entries."
    )
    embeddings_ttlcache_daemon: bool = Field(True, description="Run the periodic cache sweeper.")
    embeddings_cache_redis: bool = Field(
        False, description="Also cache in Redis at `REDIS_URL` (L2 shared by every server process)."
    )
    redis_url: str | None = Field(None, description="Redis URL (`redis://127.0.0.1:6379/0`) for the L2 cache "
                                  "and shared rate limits.")
    redis_key_prefix: str = Field("tldw", description="Prefix of every Redis key this server writes.")
    embeddings_circuit_failure_threshold: int = Field(
        5, ge=1, description="Consecutive provider failures that open its circuit breaker."
    )
    embeddings_circuit_recovery_timeout: float = Field(
        30, gt=0, description="Seconds an open circuit waits before letting a probe through."
    )
    embeddings_circuit_half_open_probes: int = Field(
        1, ge=1, description="Successful probes that close a half-open circuit."
    )
    embeddings_max_retries: int = Field(3, ge=0, description="Retries of an upstream call on 429/5xx/network errors.")
    embeddings_retry_base_delay: float = Field(0.5, ge=0, description="First retry delay in seconds (doubles).")
    embeddings_retry_max_delay: float = Field(20, ge=0, description="Longest wait between retries in seconds.")

    # --- policy and fallback ------------------------------------------------------------------
    embeddings_enforce_policy: bool = Field(False, description="Apply the allow/deny lists below (403).")
    embeddings_enforce_policy_strict: bool = Field(
        False, description="Apply the policy to admins too (otherwise admins bypass it)."
    )
    embeddings_allowed_providers: CommaList = Field([], description="Providers allowed (empty: all).")
    embeddings_allowed_models: CommaList = Field([], description="Models allowed, trailing `*` wildcard (empty: all).")
    embeddings_denied_providers: CommaList = Field([], description="Providers refused.")
    embeddings_denied_models: CommaList = Field([], description="Models refused, trailing `*` wildcard.")
    embeddings_fallback_chain: JsonDict = Field(
        DEFAULT_FALLBACK_CHAIN, description="JSON: provider -> providers tried in order when it fails "
        "(5xx, 429, network, open circuit). `{}` disables fallback."
    )
    embeddings_fallback_model_map: JsonDict = Field(
        {}, description='JSON: `"provider:model"` -> `{"<fallback provider>": "<model>"}` (or one model name for '
        "every fallback provider). Unmapped: the same model id when the fallback provider serves it, "
        "else the default model."
    )
    embeddings_allow_fallback_with_header: bool = Field(
        False, description="Keep fallback on when the caller pins a provider with the `x-provider` header."
    )

    # --- rate limits ----------------------------------------------------------------------------
    embeddings_rate_limit: Literal["on", "off"] = Field("off", description="`on`: enforce the global request rate.")
    embeddings_global_rps: float = Field(200, gt=0, description="Global requests/second when the limit is on.")
    embeddings_global_burst: int = Field(400, ge=1, description="Global burst size (token bucket capacity).")
    embeddings_tenant_rps: float = Field(0, ge=0, description="Requests/second per user (0: no per-user limit).")
    embeddings_tenant_burst: int = Field(0, ge=0, description="Per-user burst (0: twice the rate, at least 1).")
    embeddings_rate_limit_redis: bool = Field(
        False, description="Keep the buckets in Redis at `REDIS_URL`, shared by every server process."
    )

    # --- storage, media and RAG -------------------------------------------------------------
    rag: RAGSettings = Field(
        default_factory=lambda: RAGSettings.model_validate({}),
        description="Nested: `RAG__VECTOR_STORE_TYPE` (chroma|pgvector), `RAG__PGVECTOR__DSN`, "
        "`RAG__PGVECTOR__EF_SEARCH` (100), `RAG__CHROMA__URL`, `RAG__CHROMA__TOKEN`.",
    )
    chromadb_force_stub: bool = Field(
        False, description="Use an in-memory vector store instead of Chroma (tests of other modules only)."
    )
    embeddings_jobs_db_url: str | None = Field(
        None, description="SQLAlchemy URL of the jobs / vector-store metadata DB "
        "(default SQLite `$TLDW_DATA_DIR/embeddings_jobs.db`)."
    )
    media_max_upload_bytes: int = Field(
        25 * 1024 * 1024, ge=1, description="Largest media upload accepted (413 above)."
    )
    media_max_pages: int = Field(
        5000, ge=1, description="Most pages read of one uploaded PDF (more: 415 `unsupported_document`)."
    )
    media_max_unpacked_bytes: int = Field(
        256 * 2**20, ge=1, description="Most bytes a DOCX, EPUB or ODT upload may inflate to (its zip members' "
        "sizes, checked before anything is inflated: a zip bomb is refused unread)."
    )
    files_max_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Largest file `POST /v1/files` accepts (413 above)."
    )
    files_user_quota_bytes: int = Field(
        2 * 1024**3, ge=0, description="Bytes of files (the Files API) one user may keep (429 `quota_exceeded` "
        "beyond; 0: no quota)."
    )
    media_user_quota_bytes: int = Field(
        2 * 1024**3, ge=0, description="Most bytes of media text one user may keep (soft-deleted media do not "
        "count); an upload beyond it is a 429 `quota_exceeded`. 0: no quota."
    )
    chunking_method: Literal["words", "sentences", "paragraphs", "tokens"] = Field(
        "tokens", description="Default chunking method of media embedding. `tokens`: whole sentences packed "
        "into chunks measured in the embedding model's own tokens (nothing is truncated); the others count "
        "words, sentences or paragraphs and may exceed the model's window (the job reports `truncated_chunks`)."
    )
    chunking_max_size: int = Field(
        128, ge=0, description="Default chunk size in the method's units. With `tokens` it is lowered to what the "
        "embedding model's window holds (its window less its special tokens: 254 for all-MiniLM-L6-v2), so "
        "re-embedding with a model of a smaller window re-chunks for it; 0: that whole window. 128 tokens: "
        "sentence queries find their document more often than with window-sized chunks "
        "(bench/bench_findability.py), and all-MiniLM-L6-v2 was trained on sequences of up to 128 tokens."
    )
    chunking_overlap: int = Field(
        32, ge=0, description="Default overlap between neighbouring chunks in the method's units (with `tokens`, "
        "whole trailing sentences up to this many tokens); at most a fifth of a smaller chunk size."
    )
    chunking_max_allowed_size: int = Field(10_000, ge=1, description="Largest chunk size a caller may ask for.")
    chunking_max_chunks: int = Field(
        50_000, ge=1, description="Most chunks one media item or upload may make (413 above, nothing stored): "
        "bounds the memory and work one request can cause (a 2 MB text cut one word a chunk is 300,000)."
    )
    embeddings_pipeline_concurrency: int = Field(
        8, ge=1, description="Media embedding jobs run at once by the in-process executor (they mostly wait on "
        "the model: more of them keep its batcher's passes full while others chunk and store)."
    )
    embeddings_pipeline_queue_size: int = Field(
        1000, ge=1, description="Queued media embedding jobs before new ones get 429."
    )
    embeddings_pipeline: Literal["embedded", "redis"] = Field(
        "embedded", description="Who runs media embedding jobs: `embedded` (asyncio workers in the server "
        "process, no Redis) or `redis` (the server enqueues to Redis Streams at `REDIS_URL`; worker processes "
        "started by `worker_orchestrator` run the stages; needs pgvector and a jobs DB every process reaches)."
    )
    embeddings_stream_prefix: str = Field(
        "", description="Prefix of the pipeline's Redis keys (`<prefix>embeddings:<stage>`); one per deployment "
        "sharing a Redis."
    )
    embeddings_pipeline_max_retries: int = Field(
        3, ge=0, description="Retries of a pipeline step that failed transiently (exponential backoff with "
        "jitter); past them, or on a permanent error, the job fails and the message is dead-lettered."
    )
    embeddings_worker_lease_seconds: float = Field(
        30.0, gt=0, description="A worker's heartbeat lease: its pending messages are reclaimed by another worker "
        "only once they are idle this long and its heartbeat expired (a slow but live worker is never robbed)."
    )
    embeddings_workers_min: int = Field(1, ge=0, description="Worker processes per stage the orchestrator keeps.")
    embeddings_workers_max: int = Field(4, ge=1, description="Most worker processes per stage (scaled by lag + "
                                        "pending).")
    emb_backpressure_max_depth: int = Field(
        10_000, ge=1, description="Redis pipeline: a stage's lag + pending above this makes the media embedding "
        "routes answer 429 with Retry-After."
    )
    emb_backpressure_max_age_seconds: float = Field(
        600.0, gt=0, description="Redis pipeline: a stage's oldest waiting entry older than this makes the media "
        "embedding routes answer 429 with Retry-After."
    )
    embeddings_signing_secret: SecretStr | None = Field(
        None, description="Shared secret (16+ bytes) of HMAC-SHA256 signatures on every Redis pipeline message; "
        "workers dead-letter a message with a bad or stale signature (`bad_signature`) unprocessed. Set the same "
        "value on the server, the orchestrator and every worker. Unset: messages are not signed."
    )
    embeddings_signing_max_age_seconds: float = Field(
        86_400.0, gt=0, description="A signed pipeline message older than this is stale (dead-lettered); keep it "
        "above the longest time a message may wait in a stage."
    )
    embeddings_dlq_encryption_key: SecretStr | None = Field(
        None, description="AES-256-GCM keys of dead-letter payloads at rest, comma-separated, newest first, each "
        "`kid:base64key` (make one with `python -m tldw_Server_API.app.core.Embeddings.dlq_crypto --generate-key`); "
        "new entries use the first, old ones still decrypt while their key is listed. Unset: stored in clear."
    )
    reembed_skip_unchanged: bool = Field(
        True, description="A media job reuses the stored vector of every chunk whose text hash and model are "
        "unchanged (only changed chunks reach the model); `force_regenerate` re-embeds everything."
    )
    embeddings_compactor_interval_seconds: float = Field(
        3600.0, ge=0, description="How often the server's compactor deletes the vectors of soft-deleted media "
        "from every model's media collection; 0 turns the loop off (`POST /api/v1/embeddings/compactor/run` "
        "still runs it)."
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None, description="OTLP (gRPC) collector, e.g. `http://otel-collector:4317`: the server and the pipeline "
        "workers export OpenTelemetry spans (requests, cache, batcher queue and inference, provider calls, pipeline "
        "stages). Unset: tracing is off and costs nothing."
    )
    tiktoken_cache_dir: Path | None = Field(
        None,
        description="Directory holding tiktoken's cl100k_base file, used to decode token-array inputs. "
        "The install script provisions `.cache/tiktoken`.",
    )

    @field_validator(
        "embeddings_models", "trusted_hf_remote_code_models", "preload_embedding_models",
        "embeddings_allowed_providers", "embeddings_allowed_models", "embeddings_denied_providers",
        "embeddings_denied_models", mode="before",
    )
    @classmethod
    def _comma_lists(cls, value: Any) -> Any:
        return _split_commas(value)

    @model_validator(mode="after")
    def _chunk_size_for_method(self) -> Settings:
        if self.chunking_max_size == 0 and self.chunking_method != "tokens":  # 0: the window, a token count
            raise ValueError("CHUNKING_MAX_SIZE 0 (the model's window) needs CHUNKING_METHOD=tokens; set a size for "
                             f"'{self.chunking_method}'")
        return self

    @model_validator(mode="after")
    def _tiers(self) -> Settings:
        for tier, limits in self.embeddings_tier_limits.items():
            if (not isinstance(limits, dict) or set(limits) - {"daily_chunks", "concurrent_jobs"}
                    or not all(isinstance(v, int) and v >= 0 for v in limits.values())):
                raise ValueError(f"EMBEDDINGS_TIER_LIMITS[{tier!r}] must map daily_chunks and/or concurrent_jobs "
                                 "to integers >= 0")
        if self.embeddings_default_tier not in self.embeddings_tier_limits:
            raise ValueError(f"EMBEDDINGS_DEFAULT_TIER {self.embeddings_default_tier!r} is not a tier of "
                             f"EMBEDDINGS_TIER_LIMITS ({', '.join(self.embeddings_tier_limits)})")
        return self

    @field_validator(
        "embeddings_model_revisions", "embeddings_fallback_chain", "embeddings_fallback_model_map",
        "embeddings_tier_limits", "embeddings_model_aliases", mode="before"
    )
    @classmethod
    def _json_dicts(cls, value: Any) -> Any:
        return _json_value(value)

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
        return AuthConfig(single_user_api_key=key, api_keys_file=self.api_keys_file, data_dir=self.data_dir,
                          default_tier=self.embeddings_default_tier, tiers=frozenset(self.embeddings_tier_limits))

    def tier_limits(self) -> dict[str, TierLimits]:
        return {tier: TierLimits(**limits) for tier, limits in self.embeddings_tier_limits.items()}

    def logging_config(self) -> LoggingConfig:
        return LoggingConfig(level=self.log_level.upper(), json=self.log_json)

    def embeddings_api_config(self) -> EmbeddingsAPIConfig:
        return EmbeddingsAPIConfig(
            max_inputs=self.embeddings_max_inputs,
            max_tokens_per_request=self.embeddings_max_tokens_per_request,
            dimension_policy=self.embeddings_dimension_policy,
            truncate=self.embeddings_truncate,
            long_input=self.embeddings_long_input,
            aliases={str(k): str(v) for k, v in self.embeddings_model_aliases.items()},
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
                unpadded=self.embeddings_unpadded_encoder,
            ),
            onnx=OnnxConfig(
                threads=self.embeddings_onnx_threads,
                quantize=self.embeddings_onnx_quantize,
            ),
            batching=BatchingConfig(
                max_wait_ms=self.embeddings_batch_max_wait_ms,
                max_queue_texts=self.embeddings_batch_queue_size,
                max_padded_tokens=self.embeddings_local_batch_tokens,
                max_batch_rows=self.embeddings_local_batch_size,
                parallel_passes=self.embeddings_inference_workers,
                inline_pass_tokens=self.embeddings_inline_pass_tokens,
            ),
            models=ModelManagerConfig(
                max_models_in_memory=self.embeddings_max_models_in_memory,
                max_memory_mb=self.embeddings_max_model_memory_mb,
                unload_timeout_s=self.embeddings_unload_timeout_seconds,
                revisions={str(k): str(v) for k, v in self.embeddings_model_revisions.items()},
                trusted_remote_code=tuple(self.trusted_hf_remote_code_models),
                auto_download=self.auto_download_models,
                preload=tuple(self.embeddings_default_model if m == "default" else m
                              for m in self.preload_embedding_models if m.lower() != "none"),
            ),
            openai=self._remote(self.openai_base_url, self.openai_api_key),
            local_api=self._remote(self.embeddings_local_api_url, self.embeddings_local_api_key),
            prompts_file=DEFAULT_PROMPTS_FILE,
            selection=EngineSelectionConfig(
                engine=self.embeddings_engine, precision=self.embeddings_precision,
                min_mean_cosine=self.embeddings_quality_min_mean_cosine,
                min_cosine=self.embeddings_quality_min_cosine,
            ),
        )

    def _remote(self, base_url: str | None, key: SecretStr | None) -> RemoteAPIConfig:
        return RemoteAPIConfig(
            base_url=base_url.rstrip("/") if base_url else None,
            api_key=key.get_secret_value() if key else None,
            pool_size=self.embeddings_connection_pool_size,
            timeout_s=self.embeddings_request_timeout,
            max_batch_size=self.embeddings_max_batch_size,
        )

    def resilience_config(self) -> ResilienceConfig:
        redis_url = self.redis_url
        return ResilienceConfig(
            cache=CacheConfig(
                enabled=self.embeddings_cache_enabled,
                ttl_s=self.embeddings_cache_ttl_seconds,
                max_size=self.embeddings_cache_max_size,
                cleanup_interval_s=self.embeddings_cache_cleanup_interval,
                daemon=self.embeddings_ttlcache_daemon,
                redis_url=redis_url if self.embeddings_cache_redis else None,
                redis_prefix=f"{self.redis_key_prefix}:emb:cache",
            ),
            breaker=BreakerConfig(
                failure_threshold=self.embeddings_circuit_failure_threshold,
                recovery_timeout_s=self.embeddings_circuit_recovery_timeout,
                half_open_probes=self.embeddings_circuit_half_open_probes,
            ),
            retry=RetryConfig(
                max_retries=self.embeddings_max_retries,
                base_delay_s=self.embeddings_retry_base_delay,
                max_delay_s=self.embeddings_retry_max_delay,
            ),
            policy=PolicyConfig(
                enforce=self.embeddings_enforce_policy,
                strict=self.embeddings_enforce_policy_strict,
                allowed_providers=tuple(self.embeddings_allowed_providers),
                allowed_models=tuple(self.embeddings_allowed_models),
                denied_providers=tuple(self.embeddings_denied_providers),
                denied_models=tuple(self.embeddings_denied_models),
                fallback_chain={str(k): [str(p) for p in v] for k, v in self.embeddings_fallback_chain.items()},
                fallback_model_map=_model_map(self.embeddings_fallback_model_map),
                allow_fallback_with_header=self.embeddings_allow_fallback_with_header,
            ),
            rate_limit=RateLimitConfig(
                enabled=self.embeddings_rate_limit == "on" or self.embeddings_tenant_rps > 0,
                global_rps=self.embeddings_global_rps if self.embeddings_rate_limit == "on" else 0.0,
                global_burst=self.embeddings_global_burst,
                tenant_rps=self.embeddings_tenant_rps,
                tenant_burst=self.embeddings_tenant_burst or max(1, int(self.embeddings_tenant_rps * 2)),
                redis_url=redis_url if self.embeddings_rate_limit_redis else None,
                redis_prefix=f"{self.redis_key_prefix}:emb:rl",
            ),
        )

    def pipeline_config(self) -> PipelineConfig:
        return PipelineConfig(
            mode=self.embeddings_pipeline, redis_url=self.redis_url or "redis://127.0.0.1:6379/0",
            prefix=self.embeddings_stream_prefix, max_retries=self.embeddings_pipeline_max_retries,
            lease_seconds=self.embeddings_worker_lease_seconds, workers_min=self.embeddings_workers_min,
            workers_max=self.embeddings_workers_max, backpressure_depth=self.emb_backpressure_max_depth,
            backpressure_age_seconds=self.emb_backpressure_max_age_seconds,
            signing_secret=_secret(self.embeddings_signing_secret),
            signing_max_age_seconds=self.embeddings_signing_max_age_seconds,
            dlq_encryption_key=_secret(self.embeddings_dlq_encryption_key),
        )

    def storage_config(self) -> StorageConfig:
        return StorageConfig(
            data_dir=self.data_dir,
            vector_store_type=self.rag.vector_store_type,
            pgvector_dsn=self.rag.pgvector.dsn,
            pgvector_ef_search=self.rag.pgvector.ef_search,
            chroma_force_stub=self.chromadb_force_stub,
            chroma_url=self.rag.chroma.url,
            chroma_token=self.rag.chroma.token.get_secret_value() if self.rag.chroma.token else None,
            jobs_db_url=self.embeddings_jobs_db_url or f"sqlite:///{self.data_dir / 'embeddings_jobs.db'}",
            max_upload_bytes=self.media_max_upload_bytes,
            max_pages=self.media_max_pages,
            max_unpacked_bytes=self.media_max_unpacked_bytes,
            user_quota_bytes=self.media_user_quota_bytes,
            chunking=ChunkingDefaults(
                method=self.chunking_method,
                max_size=self.chunking_max_size,
                overlap=self.chunking_overlap,
                max_allowed_size=self.chunking_max_allowed_size,
                max_chunks=self.chunking_max_chunks,
            ),
            pipeline_concurrency=self.embeddings_pipeline_concurrency,
            pipeline_queue_size=self.embeddings_pipeline_queue_size,
        )


def export_settings(**values: Any) -> None:
    """Set settings for this process and the processes it starts (the CLI's `serve --port ...`,
    uvicorn's workers), as the environment variables `Settings` reads."""
    for name, value in values.items():
        if name not in Settings.model_fields:
            raise ValueError(f"unknown setting {name!r}")
        os.environ[name.upper()] = ",".join(value) if isinstance(value, list | tuple) else str(value)


def apply_library_defaults() -> None:
    """Process-wide defaults of libraries we run, unless the operator set them: HF tokenizers'
    thread pool off (requests are tokenised a few texts at a time, where the pool doubled the CPU
    and blocked 7x longer per call, measured; it also warns after a fork); oneDNN's primitive cache
    at 1,024 (oneDNN's own default, stated): torch keeps a primitive (JIT-compiled code, ~0.45 MB
    on average for MiniLM's products) per matmul shape and thread count. With no cache every
    product of every pass was compiled again (0.15-1.6 ms each, more than a 16-token pass's
    arithmetic); at 256 the unpadded encoder's token-matrix sizes (40 up to the default batch of
    1,024 tokens) x 4 products x 2 pass widths (320) did not fit, primitives were evicted and made
    again, and the server's RSS rose 13 MB/min under load. A preloaded or warmed model makes
    those at warm-up (`UnpaddedEncoder.prime`), so 1,024 holds them with room for the engine
    measurement's and another model's. Read by oneDNN when torch first uses
    it: set before any model runs."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")


def _show_default(default: Any) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list):
        return ",".join(default) if default else "empty"
    if isinstance(default, dict):
        return json.dumps(default) if default else "{}"
    if isinstance(default, Path) and not default.is_absolute():
        return f"./{default}"
    return str(default)


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_rows(annotation, f"{env}__"))  # nested: RAG__PGVECTOR__DSN
            continue
        rows.append((env, _show_default(field.default), field.description or ""))
    return rows


def env_var_table() -> list[tuple[str, str, str]]:
    """(ENV_VAR, default, description) for every field: the README's configuration table."""
    return _rows(Settings, "")


def env_var_markdown() -> str:
    """The README's configuration table, generated (a test checks the README carries it verbatim)."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, default, description in env_var_table():
        lines.append(f"| `{name}` | `{default}` | {description} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m tldw_Server_API.app.core.config  -> the README table
    print(env_var_markdown())
