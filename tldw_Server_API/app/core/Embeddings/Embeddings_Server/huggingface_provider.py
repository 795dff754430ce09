"""`huggingface` provider: transformers + torch on the local CPU/GPU.

Models load once per process and are shared by all requests. Every tokenizer and model call runs on
one dedicated thread per provider: fast tokenizers mutate their truncation state per call and fail
("Already borrowed") when shared across threads, and concurrent forward passes would only fight
over torch's intra-op threads. Batches are length-sorted (the largest CPU lever measured here),
attention-masked and run under `torch.inference_mode()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from tldw_Server_API.app.core.config import HuggingFaceConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import EmbeddingBatch, ModelInfo
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import (
    ModelFiles,
    ModelResolver,
    read_metadata,
)
from tldw_Server_API.app.core.errors import ProviderError


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@dataclass
class _LoadedModel:
    tokenizer: Any
    model: Any
    max_tokens: int
    dimension: int
    pooling: str
    batch_size: int
    device: str

    def encode(self, texts: Sequence[str]) -> EmbeddingBatch:
        import torch

        from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pooling import pool

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        counts = [0] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                encoded = self.tokenizer(
                    [texts[i] for i in rows], padding=True, truncation=True,
                    max_length=self.max_tokens, return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**encoded).last_hidden_state
                pooled = pool(hidden, encoded["attention_mask"], self.pooling)
                vectors[rows] = pooled.float().cpu().numpy()
                for row, count in zip(rows, encoded["attention_mask"].sum(dim=1).tolist(), strict=True):
                    counts[row] = int(count)
        return EmbeddingBatch(vectors=vectors, token_counts=counts)


class HuggingFaceProvider:
    name = "huggingface"

    def __init__(self, config: HuggingFaceConfig, resolver: ModelResolver) -> None:
        self._config = config
        self._resolver = resolver
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-embed")
        self._files: dict[str, ModelFiles] = {}
        self._infos: dict[str, ModelInfo] = {}
        self._tokenizers: dict[str, Any] = {}
        self._models: dict[str, _LoadedModel] = {}

    # --- metadata (cheap, no weights) -------------------------------------------------------
    def model_info(self, model_id: str) -> ModelInfo:
        info = self._infos.get(model_id)
        if info is None:
            files = self._resolver.resolve(model_id)
            meta = read_metadata(files.path)
            info = ModelInfo(self.name, model_id, meta.dimension, meta.max_tokens, files.source)
            self._files[model_id] = files
            self._infos[model_id] = info
        return info

    def loaded_models(self) -> list[str]:
        return list(self._models)

    # --- loading (off the event loop, once) -------------------------------------------------
    # Only ever called on self._executor's single thread, so no locks are needed.
    def _tokenizer_sync(self, model_id: str) -> Any:
        if model_id not in self._tokenizers:
            _quiet_transformers()
            from transformers import AutoTokenizer

            self.model_info(model_id)
            self._tokenizers[model_id] = AutoTokenizer.from_pretrained(str(self._files[model_id].path))
        return self._tokenizers[model_id]

    def _model_sync(self, model_id: str) -> _LoadedModel:
        if model_id not in self._models:
            import torch
            from transformers import AutoModel

            tokenizer = self._tokenizer_sync(model_id)
            if self._config.torch_threads:
                torch.set_num_threads(self._config.torch_threads)
            info = self.model_info(model_id)
            meta = read_metadata(self._files[model_id].path)
            model = AutoModel.from_pretrained(str(self._files[model_id].path)).to(self._config.device).eval()
            self._models[model_id] = _LoadedModel(
                tokenizer=tokenizer, model=model, max_tokens=info.max_tokens or 512,
                dimension=info.dimension or int(model.config.hidden_size), pooling=meta.pooling,
                batch_size=self._config.batch_size, device=self._config.device,
            )
        return self._models[model_id]

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def load(self, model_id: str) -> None:
        await self._run(self._model_sync, model_id)

    # --- work -------------------------------------------------------------------------------
    async def count_tokens(self, model_id: str, texts: Sequence[str]) -> list[int]:
        def count() -> list[int]:
            tokenizer = self._tokenizer_sync(model_id)
            ids = tokenizer(list(texts), add_special_tokens=True, truncation=False,
                            return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            return [len(row) for row in ids]

        result: list[int] = await self._run(count)
        return result

    async def embed(self, model_id: str, texts: Sequence[str]) -> EmbeddingBatch:
        def run() -> EmbeddingBatch:
            return self._model_sync(model_id).encode(texts)

        try:
            batch: EmbeddingBatch = await self._run(run)
            return batch
        except (RuntimeError, ValueError, OSError) as exc:  # torch/tokenizer failures, not our bugs
            raise ProviderError(f"the local model '{model_id}' failed to embed the inputs") from exc

    async def health(self) -> dict[str, Any]:
        return {"status": "healthy", "loaded_models": self.loaded_models(), "device": self._config.device}

    async def aclose(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._models.clear()
