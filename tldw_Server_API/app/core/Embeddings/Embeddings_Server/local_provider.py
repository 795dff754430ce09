"""Shared base of the in-process model providers (`huggingface`, `onnx`).

It owns what they have in common: model-file resolution and metadata, the micro-batcher per
model, and two single threads, each with its own tokenizer instances: the inference thread (all
model calls: concurrent forward passes would only fight over the same cores) and a counting
thread, so that counting a new request's tokens never waits behind a running model call (which
would split what should be one micro-batch into several). Fast tokenizers mutate their truncation
state per call and fail with "Already borrowed" when one instance is shared across threads.
A subclass supplies `_load_forward(model_id)`: a function from a tokenised, padded batch to
pooled vectors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tldw_Server_API.app.core.config import BatchingConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import EmbeddingBatch, ModelInfo
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import (
    ModelFiles,
    ModelMetadata,
    ModelResolver,
    read_metadata,
)
from tldw_Server_API.app.core.Embeddings.request_batching import MicroBatcher
from tldw_Server_API.app.core.errors import ProviderError

Forward = Callable[[dict[str, np.ndarray]], np.ndarray]  # encoded batch (numpy) -> pooled (n, d) float32


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def plan_padded_batches(lengths: Sequence[int], max_padded_tokens: int, max_batch_size: int) -> list[range]:
    """Cut positions of length-sorted (longest first) texts into batches whose padded size
    (rows x longest row) stays within the budget; a text longer than the budget runs alone."""
    batches, start = [], 0
    while start < len(lengths):
        longest = max(lengths[start], 1)
        size = max(1, min(max_batch_size, max_padded_tokens // longest, len(lengths) - start))
        batches.append(range(start, start + size))
        start += size
    return batches


@dataclass
class BatchEncoder:
    """Tokenise once, sort by token length, and run batches cut by a padded-token budget, so
    texts of very different lengths never pad each other up; rows come back in input order."""

    tokenizer: Any
    forward: Forward
    max_tokens: int
    dimension: int
    batch_size: int
    max_padded_tokens: int

    def _pad(self, rows: list[list[int]], pad_id: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        for r, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[r, span], mask[r, span] = row, 1
        return ids, mask

    def encode(self, texts: Sequence[str]) -> EmbeddingBatch:
        token_ids: list[list[int]] = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_tokens, padding=False,
            return_attention_mask=False, return_token_type_ids=False,
        )["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]), reverse=True)
        pad_id = self.tokenizer.pad_token_id or 0
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for span in plan_padded_batches([len(token_ids[i]) for i in order], self.max_padded_tokens,
                                        self.batch_size):
            rows = [order[j] for j in span]
            ids, mask = self._pad([token_ids[i] for i in rows], pad_id, len(token_ids[rows[0]]))
            vectors[rows] = self.forward({"input_ids": ids, "attention_mask": mask,
                                          "token_type_ids": np.zeros_like(ids)})
        return EmbeddingBatch(vectors=vectors, token_counts=[len(row) for row in token_ids])


class LocalModelProvider:
    name = "local"

    def __init__(self, resolver: ModelResolver, batching: BatchingConfig) -> None:
        self._resolver = resolver
        self._batching = batching
        self._batchers: dict[str, MicroBatcher] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-embed")
        self._count_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-count")
        self._count_tokenizers: dict[str, Any] = {}
        self._files: dict[str, ModelFiles] = {}
        self._meta: dict[str, ModelMetadata] = {}
        self._infos: dict[str, ModelInfo] = {}
        self._tokenizers: dict[str, Any] = {}
        self._encoders: dict[str, BatchEncoder] = {}

    # --- hooks for subclasses -----------------------------------------------------------------
    def base_model_id(self, model_id: str) -> str:
        """The id whose files hold the weights (a subclass may strip a variant suffix)."""
        return model_id

    def _load_forward(self, model_id: str) -> Forward:
        raise NotImplementedError

    # --- metadata (cheap, no weights) -------------------------------------------------------
    def model_info(self, model_id: str) -> ModelInfo:
        info = self._infos.get(model_id)
        if info is None:
            files = self._resolver.resolve(self.base_model_id(model_id))
            meta = read_metadata(files.path)
            info = ModelInfo(self.name, model_id, meta.dimension, meta.max_tokens, files.source)
            self._files[model_id], self._meta[model_id], self._infos[model_id] = files, meta, info
        return info

    def model_path(self, model_id: str) -> Path:
        self.model_info(model_id)
        return self._files[model_id].path

    def loaded_models(self) -> list[str]:
        return list(self._encoders)

    # --- loading: each cache is only touched from its own single thread, so no locks ----------
    def _tokenizer_sync(self, model_id: str, cache: dict[str, Any]) -> Any:
        """The tokenizer instance of one thread (`cache` is that thread's own)."""
        if model_id not in cache:
            quiet_transformers()
            from transformers import AutoTokenizer

            cache[model_id] = AutoTokenizer.from_pretrained(str(self.model_path(model_id)))
        return cache[model_id]

    def _encoder_sync(self, model_id: str) -> BatchEncoder:
        if model_id not in self._encoders:
            info = self.model_info(model_id)
            tokenizer = self._tokenizer_sync(model_id, self._tokenizers)
            forward = self._load_forward(model_id)
            self._encoders[model_id] = BatchEncoder(
                tokenizer=tokenizer, forward=forward, max_tokens=info.max_tokens or 512,
                dimension=info.dimension or 0, batch_size=self._batching.max_batch_rows,
                max_padded_tokens=self._batching.max_padded_tokens,
            )
        return self._encoders[model_id]

    async def _run(self, fn: Callable[..., Any], *args: Any, executor: ThreadPoolExecutor | None = None) -> Any:
        """Run on the inference thread (default) or the given single-thread executor."""
        return await asyncio.get_running_loop().run_in_executor(executor or self._executor, fn, *args)

    async def load(self, model_id: str) -> None:
        await self._run(self._encoder_sync, model_id)

    # --- work -------------------------------------------------------------------------------
    async def count_tokens(self, model_id: str, texts: Sequence[str]) -> list[int]:
        def count() -> list[int]:
            ids = self._tokenizer_sync(model_id, self._count_tokenizers)(
                list(texts), add_special_tokens=True, truncation=False,
                return_attention_mask=False, return_token_type_ids=False,
            )["input_ids"]
            return [len(row) for row in ids]

        result: list[int] = await self._run(count, executor=self._count_executor)
        return result

    async def embed(
        self, model_id: str, texts: Sequence[str], token_counts: Sequence[int] | None = None
    ) -> EmbeddingBatch:
        """Through the model's micro-batcher, which merges concurrent requests into one call."""
        batcher = self._batchers.get(model_id)
        if batcher is None or batcher.loop is not asyncio.get_running_loop():
            async def run_batch(batch_texts: list[str]) -> EmbeddingBatch:
                return await self._encode_now(model_id, batch_texts)

            batcher = self._batchers[model_id] = MicroBatcher(run_batch, self._batching)
        return await batcher.submit(texts, token_counts)

    async def _encode_now(self, model_id: str, texts: Sequence[str]) -> EmbeddingBatch:
        def run() -> EmbeddingBatch:
            return self._encoder_sync(model_id).encode(texts)

        try:
            batch: EmbeddingBatch = await self._run(run)
        except (RuntimeError, ValueError, OSError) as exc:  # model runtime failures, not caller errors
            raise ProviderError(f"the local model '{model_id}' failed to embed the inputs") from exc
        return batch

    def batcher_stats(self) -> dict[str, dict[str, Any]]:
        return {
            model_id: {"queued_texts": b.queued_texts, "batches_run": b.batches_run,
                       "recent_batch_sizes": list(b.last_batch_sizes)[-8:]}
            for model_id, b in self._batchers.items()
        }

    async def health(self) -> dict[str, Any]:
        return {"status": "healthy", "loaded_models": self.loaded_models(), "batchers": self.batcher_stats()}

    async def aclose(self) -> None:
        for batcher in self._batchers.values():
            await batcher.aclose()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._count_executor.shutdown(wait=True, cancel_futures=True)
        self._encoders.clear()
