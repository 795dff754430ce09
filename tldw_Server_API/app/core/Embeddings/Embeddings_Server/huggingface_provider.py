"""`huggingface` provider: transformers + torch on the local CPU/GPU, attention-masked pooling
under `torch.inference_mode()` (last-token pooling for Qwen3 embedding models). Model cache,
batching, tokenizers, Qwen3 input handling and the inference thread come from
`LocalModelProvider`; `trust_remote_code` is passed only for trusted model ids.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np

from tldw_Server_API.app.core.config import BatchingConfig, HuggingFaceConfig, ModelManagerConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_provider import Forward, LocalModelProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_manager import Clock
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver


class HuggingFaceProvider(LocalModelProvider):
    name = "huggingface"

    def __init__(self, config: HuggingFaceConfig, resolver: ModelResolver, batching: BatchingConfig,
                 models: ModelManagerConfig | None = None, prompts_file: Path | None = None, *,
                 clock: Clock = time.monotonic, **kwargs: Any) -> None:
        super().__init__(resolver, batching, models, prompts_file, clock=clock, **kwargs)
        self._config = config

    def _load_forward(self, model_id: str) -> tuple[Forward, int]:
        import torch
        from transformers import AutoModel

        from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pooling import pool

        if self._config.torch_threads:
            torch.set_num_threads(self._config.torch_threads)
        device = self._config.device
        model = self._from_pretrained(AutoModel, model_id).to(device).eval()
        size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        input_names = set(inspect.signature(model.forward).parameters)
        extra = {"use_cache": False} if "use_cache" in input_names else {}   # decoder models (Qwen3)
        pooling = self.profile(model_id).pooling

        def forward(encoded: dict[str, np.ndarray]) -> np.ndarray:
            tensors: dict[str, Any] = {
                k: torch.from_numpy(v).to(device) for k, v in encoded.items() if k in input_names
            }
            with torch.inference_mode():
                hidden = model(**tensors, **extra).last_hidden_state.float().cpu().numpy()
            return pool(hidden, encoded["attention_mask"], pooling)

        return forward, int(size)

    async def health(self) -> dict[str, Any]:
        return {**await super().health(), "device": self._config.device}
