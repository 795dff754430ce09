"""Shared base of the in-process model providers (`huggingface`, `onnx`): model resolution and
background hub downloads, the model cache (LRU, count/memory caps, idle unload; models in use
are never evicted), a micro-batcher per loaded model, Qwen3 embedding behaviour, and the threads
that do the work: one loads models, the pass threads (`PassThreads`: one for a pass alone on
the model, `parallel_passes()` for passes beside others) run forward passes (a lone small pass,
a search query on an idle server, may run on the event loop's thread: `_inline`), and one counts
tokens with its own tokenizers (so counts never wait behind a model call). Requests of a few
short texts (a search query) are tokenised on the event loop with a tokenizer instance of its
own: a hop to the counting thread and back costs more than the work. Rows tokenised for counting
are kept until the batcher takes them, so a text is tokenised once. A subclass supplies
`_load_forward(model_id) -> (forward, estimated bytes)`.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from loguru import logger

from tldw_Server_API.app.core.config import BatchingConfig, ModelManagerConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.hub_download import HubProbe
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_encoding import (
    BatchEncoder,
    Forward,
    find_end_token_id,
    plan_padded_batches,
    tokenize_rows,
)
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_manager import (
    CacheLimits,
    Clock,
    DownloadTracker,
    Evicted,
    IdleSweeper,
    ModelCache,
    sweep_interval,
)
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import (
    ModelFiles,
    ModelMetadata,
    ModelResolver,
    needs_remote_code,
    read_metadata,
    trust_remote_code_allowed,
    weights_bytes,
)
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pass_threads import PassThreads
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.provider_types import EmbeddingBatch, ModelInfo
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.qwen3_instructions import (
    InstructionPrompts,
    format_texts,
    is_qwen3_embedding,
    load_prompts,
)
from tldw_Server_API.app.core.Embeddings.request_batching import MicroBatcher
from tldw_Server_API.app.core.errors import InvalidInput, ModelNotFound, ProviderError, ServiceUnavailable, TLDWError

__all__ = ["DEFAULT_MODEL_MANAGEMENT", "BatchEncoder", "Forward", "LocalModelProvider", "ModelProfile",
           "plan_padded_batches", "quiet_transformers"]

DEFAULT_MODEL_MANAGEMENT = ModelManagerConfig(
    max_models_in_memory=3, max_memory_mb=0, unload_timeout_s=0, revisions={}, trusted_remote_code=(),
    auto_download=False, preload=(),
)
QWEN3_END_TOKEN = "<|endoftext|>"
DOWNLOAD_RETRY_AFTER_S = 10.0
INLINE_TOKENIZE_CHARS = 2_000   # texts this short (in all) are tokenised on the event loop (~0.2 ms),
                                # not on the counting thread (a round trip of ~0.5 ms on 2 busy cores)
INLINE_PASS_MAX_S = 0.025      # a small pass runs on the event loop only for a model whose small passes
                                # take at most this (MiniLM: 1-6 ms with onnx, 5-18 ms with torch)
PENDING_ROWS_MAX = 4_096        # rows counted and not yet embedded (a refused request never embeds)
# transformers resolves its names lazily, and two threads resolving them at once can see a module
# half imported ("cannot import name 'AutoTokenizer'"): the first onnx and huggingface loads of a
# process raced so. Every provider in the process loads models and tokenizers under this one lock
# (loads are rare and take seconds; serialising them costs nothing that matters).
LIBRARY_LOCK = threading.RLock()
T = TypeVar("T")


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def hub_offline() -> bool:
    from huggingface_hub.constants import is_offline_mode

    return bool(is_offline_mode())


@dataclass(frozen=True)
class ModelProfile:
    """How one model is fed and pooled."""

    pooling: str                     # "mean" | "cls" | "lasttoken"
    instructions: bool = False       # Qwen3: instruction-format queries
    padding_side: str | None = None  # None: the tokenizer's own
    end_token: str | None = None     # appended to each row unless the tokenizer already did


def model_profile(model_id: str, meta: ModelMetadata) -> ModelProfile:
    if is_qwen3_embedding(model_id):
        return ModelProfile("lasttoken", instructions=True, padding_side="left", end_token=QWEN3_END_TOKEN)
    return ModelProfile(meta.pooling)


@contextmanager
def load_errors(model_id: str) -> Iterator[None]:
    """Anything but a domain error while loading a model becomes a ProviderError (502)."""
    try:
        yield
    except TLDWError:
        raise
    except Exception as exc:  # loaders raise many types (OSError, ValueError, KeyError, ...)
        logger.warning("loading {} failed: {}: {}", model_id, type(exc).__name__, exc)
        raise ProviderError(f"the local model '{model_id}' could not be loaded") from exc


class LocalModelProvider:
    name = "local"

    def __init__(self, resolver: ModelResolver, batching: BatchingConfig,
                 models: ModelManagerConfig | None = None, prompts_file: Path | None = None, *,
                 clock: Clock = time.monotonic, sweep_sleep: Callable[[float], Any] = asyncio.sleep,
                 hub_endpoint: str | None = None) -> None:
        self._resolver = resolver
        self._batching = batching
        self._management = models or DEFAULT_MODEL_MANAGEMENT
        self._prompts_file = prompts_file
        self._prompts: InstructionPrompts | None = None
        self._hub_endpoint = hub_endpoint
        self._batchers: dict[str, MicroBatcher] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-load")
        self._pass_threads: PassThreads | None = None   # made on first use: parallel_passes()
        self._passes_in_threads = 0                     # passes running on the pass threads now
        self.inline_passes = 0                          # passes run on the event loop's thread (`_inline`)
        self._small_pass_s: dict[str, deque[float]] = {}   # model -> times of its last small passes
        self._count_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-count")
        self._download_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-download")
        self._count_tokenizers: dict[str, Any] = {}     # used on the counting thread only
        self._inline_tokenizers: dict[str, Any] = {}    # used on the event loop only
        self._pending_rows: OrderedDict[tuple[str, str], list[int]] = OrderedDict()  # event loop only
        self._files: dict[str, ModelFiles] = {}
        self._meta: dict[str, ModelMetadata] = {}
        self._infos: dict[str, ModelInfo] = {}
        self._preferred: dict[str, str] = {}            # bare id -> variant it runs (`run_as`)
        timeout = self._management.unload_timeout_s
        self._cache: ModelCache[BatchEncoder] = ModelCache(
            CacheLimits(self._management.max_models_in_memory, self._management.max_memory_mb * 2**20, timeout),
            clock=clock)
        self._sweeper = IdleSweeper(self.evict_idle, sweep_interval(timeout), sleep=sweep_sleep)
        self._downloads = DownloadTracker(self._download_executor, clock=clock)
        self._hub: HubProbe | None = None
        if resolver.auto_download and not hub_offline():   # known before the first model that is not here
            self._hub = HubProbe(hub_endpoint)
            self._hub.reachable()

    # --- hooks for subclasses -----------------------------------------------------------------
    def base_model_id(self, model_id: str) -> str:
        """The id whose files hold the weights (without a variant suffix)."""
        return self.split_variant(model_id)[0]

    def engine_id(self, model_id: str) -> str:
        """The one name of what runs: ids that run the same weights at the same precision share a
        loaded model, its batcher and its tokenizers -- `<id>` and `<id>@fp32` while the bare id runs
        fp32; once the engine choice runs it at another precision (`run_as`), `<id>` shares
        `<id>@bf16`'s and `<id>@fp32` is an engine of its own (a name that loads at the precision
        it says). Every public entry point that loads or runs applies it; `model_info` keeps the
        caller's id (vectors are stored under that)."""
        base, variant = self.split_variant(model_id)
        bare_runs = self._preferred.get(base, self.default_variant())
        return base if variant == "fp32" == bare_runs else f"{base}@{variant}"

    def precision(self, model_id: str) -> str:
        return self.split_variant(model_id)[1]

    variants: tuple[str, ...] = ("fp32",)   # the `@<variant>` suffixes this provider runs

    def default_variant(self) -> str:
        """What a bare id runs when the engine choice set nothing (`run_as`)."""
        return "fp32"

    def split_variant(self, model_id: str) -> tuple[str, str]:
        """(base id, precision) of `<id>` or `<id>@<variant>`; a bare id runs its preferred variant
        (`run_as`), else the provider's default. An unknown variant is a 400."""
        base, sep, variant = model_id.rpartition("@")
        if not sep:
            return model_id, self._preferred.get(model_id, self.default_variant())
        if variant not in self.variants:
            allowed = " or ".join(f"@{v}" for v in self.variants)
            raise InvalidInput(f"unknown {self.name} variant '@{variant}'; use {allowed}", param="model")
        return base, variant

    def run_as(self, model_id: str, variant: str) -> None:
        """Run the bare `model_id` at `variant` from now on (the engine choice found that variant
        exact for it: its vectors stay under the bare id)."""
        if self._preferred.get(model_id) != variant:
            self._preferred[model_id] = variant
            self._infos.pop(model_id, None)

    def _load_forward(self, model_id: str) -> tuple[Forward, int]:
        """The forward function of a loaded model and its estimated memory in bytes."""
        raise NotImplementedError

    def _estimate_bytes(self, model_id: str) -> int:
        return weights_bytes(self.model_path(model_id))

    def parallel_passes(self) -> int:
        """Forward passes of one model that run at once: EMBEDDINGS_INFERENCE_WORKERS, else the
        provider's own default (`_default_parallel_passes`)."""
        return self._batching.parallel_passes or self._default_parallel_passes()

    def _default_parallel_passes(self) -> int:
        return 1

    # --- metadata (cheap, no weights, no network) ---------------------------------------------
    def model_info(self, model_id: str) -> ModelInfo:
        info = self._infos.get(model_id)
        if info is None:
            base = self.base_model_id(model_id)
            files = self._resolver.locate(base) or self._missing(base)
            meta = read_metadata(files.path)
            info = ModelInfo(self.name, model_id, meta.dimension, meta.max_tokens, files.source, files.revision,
                             engine=f"{self.name}:{self.precision(model_id)}")
            self._files[model_id], self._meta[model_id], self._infos[model_id] = files, meta, info
        return info

    def _missing(self, base: str) -> ModelFiles:
        """No local copy: the reason, a remembered download failure, or a background download."""
        if not self._resolver.can_download(base):
            files = self._resolver.locate(base)   # a download may have just finished
            if files is None:
                raise self._resolver.missing(base)
            return files
        if hub_offline():
            raise ModelNotFound(f"The model `{base}` is not available locally and the Hugging Face hub is "
                                "offline (HF_HUB_OFFLINE)", param="model")
        if self._hub is None:
            self._hub = HubProbe(self._hub_endpoint)
        if self._hub.reachable() is False:
            raise ModelNotFound(f"The model `{base}` is not available locally and the Hugging Face hub cannot be "
                                "reached to fetch it", param="model")
        failure = self._downloads.recent_failure(base)
        if isinstance(failure, TLDWError):
            raise type(failure)(failure.message, param=failure.param, code=failure.code)
        self._downloads.start(base, lambda: self._fetch_sync(base))
        raise ServiceUnavailable(f"The model `{base}` is being downloaded from the Hugging Face hub; retry shortly",
                                 retry_after=DOWNLOAD_RETRY_AFTER_S, param="model", code="model_downloading")

    def _fetch_sync(self, base: str) -> ModelFiles:
        from tldw_Server_API.app.core.Embeddings.Embeddings_Server.hub_download import download_model

        files = self._resolver.locate(base)
        if files is not None:   # an earlier download finished meanwhile
            return files
        download_model(base, self._resolver.pinned(base), self._resolver.download_target(base),
                       endpoint=self._hub_endpoint, allow_code=self.trust_remote_code(base))
        return self._resolver.resolve(base)

    def model_path(self, model_id: str) -> Path:
        self.model_info(model_id)
        return self._files[model_id].path

    def model_revision(self, model_id: str) -> str:
        """The revision of the local copy in use ("bundled" for the package, "" when unknown)."""
        self.model_info(model_id)
        return self._files[model_id].revision

    def profile(self, model_id: str) -> ModelProfile:
        self.model_info(model_id)
        return model_profile(self.base_model_id(model_id), self._meta[model_id])

    def trust_remote_code(self, model_id: str) -> bool:
        return trust_remote_code_allowed(self.base_model_id(model_id), self._management.trusted_remote_code)

    def loaded_models(self) -> list[str]:
        return self._cache.loaded()

    def prepare_texts(self, model_id: str, texts: Sequence[str]) -> list[str]:
        """What the model sees: Qwen3 queries get their instruction, everything else is as is."""
        if not self.profile(model_id).instructions:
            return list(texts)
        if self._prompts is None:
            self._prompts = load_prompts(self._prompts_file)
        return format_texts(texts, self._prompts)

    def window_tokenizer(self, model_id: str) -> tuple[Any, int]:
        """(a thread-safe counting tokenizer of the model, the tokens the model adds to every
        text: special tokens, an end token, an instruction). For chunks that fit the window
        (`chunk_windows.py`); loads a tokenizer, so call it off the event loop."""
        from tldw_Server_API.app.core.Chunking import ThreadLocalHFTokenizer

        with load_errors(model_id):
            probe = self._tokenizer_sync(model_id)
        end_token = find_end_token_id(probe, self.profile(model_id).end_token)
        added = len(tokenize_rows(probe, self.prepare_texts(model_id, [""]), None, end_token)[0])
        return ThreadLocalHFTokenizer(lambda: self._tokenizer_sync(model_id)), added

    # --- loading (inference thread) -----------------------------------------------------------
    def _from_pretrained(self, loader: Any, model_id: str, **kwargs: Any) -> Any:
        quiet_transformers()
        trusted = self.trust_remote_code(model_id)
        refused = InvalidInput(f"The model `{model_id}` ships its own code; allow it with "
                               "TRUSTED_HF_REMOTE_CODE_MODELS", param="model", code="remote_code_not_trusted")
        if not trusted and needs_remote_code(self.model_path(model_id)):
            raise refused
        try:
            return loader.from_pretrained(str(self.model_path(model_id)), trust_remote_code=trusted, **kwargs)
        except ValueError as exc:
            if "trust_remote_code" not in str(exc):
                raise
            raise refused from exc

    def _tokenizer_sync(self, model_id: str, cache: dict[str, Any] | None = None) -> Any:
        """A tokenizer instance: the counting thread's cached one, or a new one (`cache` None)."""
        if cache is not None and model_id in cache:
            return cache[model_id]
        with LIBRARY_LOCK:
            from transformers import AutoTokenizer

            tokenizer = self._from_pretrained(AutoTokenizer, model_id)
        if cache is not None:
            cache[model_id] = tokenizer
        return tokenizer

    def _load_sync(self, model_id: str) -> tuple[BatchEncoder, list[Evicted[BatchEncoder]]]:
        encoder = self._cache.get(model_id)
        if encoder is not None:
            return encoder, []
        with LIBRARY_LOCK:
            return self._load_locked(model_id)

    def _load_locked(self, model_id: str) -> tuple[BatchEncoder, list[Evicted[BatchEncoder]]]:
        evicted = self._cache.make_room(self._estimate_bytes(model_id))
        info, profile = self.model_info(model_id), self.profile(model_id)
        tokenizer = self._tokenizer_sync(model_id)
        forward, size = self._load_forward(model_id)
        encoder = BatchEncoder(
            tokenizer=tokenizer, forward=forward, max_tokens=info.max_tokens or 512, dimension=info.dimension or 0,
            batch_size=self._batching.max_batch_rows, max_padded_tokens=self._batching.max_padded_tokens,
            threads=self._passes(),
            padding_side=profile.padding_side or str(getattr(tokenizer, "padding_side", "right")),
            end_token_id=find_end_token_id(tokenizer, profile.end_token),
        )
        logger.info("{}: loaded {} (~{} MB)", self.name, model_id, size // 2**20)
        return encoder, evicted + self._cache.put(model_id, encoder, size)

    async def _run(self, fn: Callable[..., Any], *args: Any, executor: ThreadPoolExecutor | None = None) -> Any:
        """Run on the loading thread (default) or the given executor."""
        return await asyncio.get_running_loop().run_in_executor(executor or self._executor, fn, *args)

    def _passes(self) -> PassThreads:
        if self._pass_threads is None:
            self._pass_threads = PassThreads(self.parallel_passes(), self.name)
        return self._pass_threads

    async def loaded_encoder(self, model_id: str) -> BatchEncoder:
        """The engine itself (no batcher), loaded when needed; the caller holds a `use`."""
        return await self._loaded(model_id)

    async def _loaded(self, model_id: str) -> BatchEncoder:
        """The model's encoder, loaded (and other models evicted) when needed; caller holds a use.
        A loaded model is taken straight from the (locked) cache, without a hop to the loading thread."""
        model_id = self.engine_id(model_id)
        encoder = self._cache.get(model_id)
        if encoder is not None:
            return encoder
        with load_errors(model_id):
            encoder, evicted = await self._run(self._load_sync, model_id)
        await self._release(evicted)
        return encoder

    async def _release(self, evicted: list[Evicted[BatchEncoder]]) -> None:
        """Free what eviction took: the batcher and counting tokenizer of each model (unless it
        came back into use meanwhile), then the memory."""
        ids = [model_id for model_id, _ in evicted]
        evicted.clear()
        if not ids:
            return
        loop = asyncio.get_running_loop()
        for model_id in ids:
            if model_id in self._cache or self._cache.in_use(model_id):
                continue
            batcher = self._batchers.pop(model_id, None)
            if batcher is not None and batcher.loop is loop:
                await batcher.aclose()
            await self._run(self._count_tokenizers.pop, model_id, None, executor=self._count_executor)
            self._inline_tokenizers.pop(model_id, None)
            for key in [key for key in self._pending_rows if key[0] == model_id]:
                del self._pending_rows[key]
        await self._run(gc.collect)
        logger.info("{}: unloaded {}", self.name, ", ".join(ids))

    def _start_sweeper(self) -> None:
        if self._management.unload_timeout_s > 0:
            self._sweeper.ensure_running()

    # --- model management ---------------------------------------------------------------------
    async def download(self, model_id: str) -> ModelInfo:
        """Make the model's files local: nothing when a copy is there, else a hub download
        (AUTO_DOWNLOAD_MODELS) at the pinned revision, joining one already running."""
        base = self.base_model_id(model_id)
        if self._resolver.locate(base) is None:
            if self._resolver.can_download(base):
                await asyncio.wrap_future(self._downloads.start(base, lambda: self._fetch_sync(base)))
            elif self._resolver.locate(base) is None:   # not a download that just finished
                raise self._resolver.missing(base)
            self._infos.pop(model_id, None)
        return self.model_info(model_id)

    async def warmup(self, model_id: str) -> ModelInfo:
        """Download if needed, load, run one tiny forward pass, and prime what the engine prepares
        per input shape (`_prime`)."""
        model_id = self.engine_id(model_id)
        info = await self.download(model_id)
        texts = self.prepare_texts(model_id, ["warmup"])
        async with self.use(model_id):
            encoder = await self._loaded(model_id)
            await self._run(encoder.encode, texts)
            await self._prime(model_id, encoder)
        return info

    async def _prime(self, model_id: str, encoder: BatchEncoder) -> None:
        """Prepare, at warm-up, what the engine would otherwise make on first sight of each input
        shape under load; nothing by default."""

    @asynccontextmanager
    async def use(self, model_id: str) -> AsyncIterator[None]:
        """Hold a model in use for the block (e.g. across a job's batches): it is never evicted
        meanwhile, and its idle time starts when the last use ends."""
        model_id = self.engine_id(model_id)
        self.model_info(model_id)
        self._start_sweeper()
        async with self._cache.use(model_id, self._release):
            yield

    async def load(self, model_id: str) -> None:
        async with self.use(model_id):
            await self._loaded(model_id)

    async def unload(self, model_id: str) -> bool:
        """Unload one model now; False when it is not loaded or in use."""
        model_id = self.engine_id(model_id)
        evicted = self._cache.remove(model_id)
        unloaded = bool(evicted)
        await self._release(evicted)
        return unloaded

    async def evict_idle(self) -> list[str]:
        """Unload models idle past EMBEDDINGS_UNLOAD_TIMEOUT_SECONDS (the sweeper calls this)."""
        evicted = self._cache.evict_idle()
        ids = [model_id for model_id, _ in evicted]
        await self._release(evicted)
        return ids

    # --- work -------------------------------------------------------------------------------
    async def _with_tokenizer(self, model_id: str, texts: Sequence[str], work: Callable[[Any], T]) -> T:
        """`work(tokenizer)` inline on the event loop when the texts are short and the loop's
        tokenizer is loaded, else on the counting thread (which loads both tokenizers)."""
        inline = self._inline_tokenizers.get(model_id)
        if inline is not None and sum(len(text) for text in texts) <= INLINE_TOKENIZE_CHARS:
            return work(inline)

        def run() -> tuple[T, Any]:
            with load_errors(model_id):
                tokenizer = self._tokenizer_sync(model_id, self._count_tokenizers)
                loop_copy = inline or self._tokenizer_sync(model_id)
            return work(tokenizer), loop_copy

        result, loop_copy = await self._run(run, executor=self._count_executor)
        self._inline_tokenizers.setdefault(model_id, loop_copy)
        return result

    async def count_tokens(self, model_id: str, texts: Sequence[str]) -> list[int]:
        model_id = self.engine_id(model_id)
        prepared = self.prepare_texts(model_id, texts)
        end_token = self.profile(model_id).end_token

        def rows_of(tokenizer: Any) -> list[list[int]]:
            return tokenize_rows(tokenizer, prepared, None, find_end_token_id(tokenizer, end_token))

        rows = await self._with_tokenizer(model_id, prepared, rows_of)
        self._keep_rows(model_id, prepared, rows)
        return [len(row) for row in rows]

    def _keep_rows(self, model_id: str, texts: Sequence[str], rows: Sequence[list[int]]) -> None:
        """Remember counted rows for the batcher (its `tokenize`); the oldest go beyond PENDING_ROWS_MAX."""
        pending = self._pending_rows
        for text, row in zip(texts, rows, strict=True):
            pending[(model_id, text)] = row
            pending.move_to_end((model_id, text))
        while len(pending) > PENDING_ROWS_MAX:
            pending.popitem(last=False)

    async def embed(
        self, model_id: str, texts: Sequence[str], token_counts: Sequence[int] | None = None  # noqa: ARG002
    ) -> EmbeddingBatch:
        """Through the model's micro-batcher, which runs rows of concurrent requests in shared passes."""
        model_id = self.engine_id(model_id)
        prepared = self.prepare_texts(model_id, texts)
        async with self.use(model_id):
            batcher = self._batchers.get(model_id)
            if batcher is None or batcher.loop is not asyncio.get_running_loop():
                batcher = self._batchers[model_id] = self._new_batcher(model_id)
            return await batcher.submit(prepared)

    def _new_batcher(self, model_id: str) -> MicroBatcher:
        async def tokenize(texts: list[str]) -> list[list[int]]:
            """Each text's counted row when no truncation applies to it, else tokenised now
            (a counted one over the window goes straight to the tokenizer's truncation)."""
            encoder = await self._loaded(model_id)
            counted = [self._pending_rows.pop((model_id, text), None) for text in texts]
            rows = [row if row is not None and encoder.untruncated(row) else None for row in counted]
            todo = [i for i, row in enumerate(rows) if row is None]
            if todo:
                todo_texts, long = [texts[i] for i in todo], [counted[i] is not None for i in todo]
                fresh = await self._with_tokenizer(
                    model_id, todo_texts, lambda tokenizer: encoder.tokenize(todo_texts, tokenizer, long))
                for i, row in zip(todo, fresh, strict=True):
                    rows[i] = row
            return rows  # type: ignore[return-value]

        async def run_pass(rows: list[list[int]], lone: bool) -> np.ndarray:
            encoder = await self._loaded(model_id)
            started = time.perf_counter()
            try:
                if lone and self._inline(model_id, rows):
                    self.inline_passes += 1
                    vectors: np.ndarray = encoder.run_rows(rows)
                else:
                    self._passes_in_threads += 1
                    threads = self._passes()
                    try:
                        vectors = await asyncio.wrap_future(
                            (threads.lone if lone else threads.shared)(encoder.run_rows, rows))
                    finally:
                        self._passes_in_threads -= 1
            except (RuntimeError, ValueError, OSError) as exc:  # model runtime failures, not caller errors
                raise ProviderError(f"the local model '{model_id}' failed to embed the inputs") from exc
            if self._small(rows):
                self._small_pass_s.setdefault(model_id, deque(maxlen=5)).append(time.perf_counter() - started)
            return vectors

        return MicroBatcher(tokenize, run_pass, replace(self._batching, parallel_passes=self.parallel_passes()))

    def _small(self, rows: Sequence[Sequence[int]]) -> bool:
        return len(rows) * max(len(row) for row in rows) <= self._batching.inline_pass_tokens

    def _inline(self, model_id: str, rows: Sequence[Sequence[int]]) -> bool:
        """Whether a lone pass over `rows` runs on the event loop's thread: it is small
        (EMBEDDINGS_INLINE_PASS_TOKENS); this model's recent small passes took at most
        INLINE_PASS_MAX_S at the median (the first ones run on a pass thread and are timed: a
        large model never holds the loop, a slow first pass does not count for long); and no
        pass of this provider runs on a pass thread (the loop never waits for another pass's
        threads, e.g. torch's shared intra-op threads). The two thread hand-offs it saves cost
        more than the pass itself delays the loop."""
        recent = sorted(self._small_pass_s.get(model_id, ()))
        return (self._passes_in_threads == 0 and self.inline_capable() and self._small(rows)
                and bool(recent) and recent[len(recent) // 2] <= INLINE_PASS_MAX_S)

    def inline_capable(self) -> bool:
        """Whether this provider's passes may run on the event loop's thread at all (not where that
        thread would become a second owner of a wide torch thread pool: `pass_threads`)."""
        return True

    def batcher_stats(self) -> dict[str, dict[str, Any]]:
        return {model_id: b.stats() for model_id, b in self._batchers.items()}

    async def health(self) -> dict[str, Any]:
        return {"status": "healthy", "loaded_models": self.loaded_models(), "batchers": self.batcher_stats(),
                "parallel_passes": self.parallel_passes(), "inline_passes": self.inline_passes,
                "model_cache": self._cache.stats(), "counting_tokenizers": sorted(self._count_tokenizers),
                "inline_tokenizers": sorted(self._inline_tokenizers)}

    async def aclose(self) -> None:
        await self._sweeper.aclose()
        for batcher in self._batchers.values():
            await batcher.aclose()
        self._batchers.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._pass_threads is not None:
            self._pass_threads.shutdown()
        self._count_executor.shutdown(wait=True, cancel_futures=True)
        self._download_executor.shutdown(wait=False, cancel_futures=True)
        self._cache.clear()
