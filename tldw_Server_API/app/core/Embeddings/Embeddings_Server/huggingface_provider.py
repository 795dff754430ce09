"""`huggingface` provider: transformers + torch on the local CPU/GPU, attention-masked pooling
under `torch.inference_mode()`. Batching, tokenizers and the inference thread come from
`LocalModelProvider`.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

from tldw_Server_API.app.core.config import BatchingConfig, HuggingFaceConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_provider import Forward, LocalModelProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver


class HuggingFaceProvider(LocalModelProvider):
    name = "huggingface"

    def __init__(self, config: HuggingFaceConfig, resolver: ModelResolver, batching: BatchingConfig) -> None:
        super().__init__(resolver, batching)
        self._config = config

    def _load_forward(self, model_id: str) -> Forward:
        import torch
        from transformers import AutoModel

        from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pooling import pool

        if self._config.torch_threads:
            torch.set_num_threads(self._config.torch_threads)
        device = self._config.device
        model = AutoModel.from_pretrained(str(self.model_path(model_id))).to(device).eval()
        input_names = set(inspect.signature(model.forward).parameters)
        pooling = self._meta[model_id].pooling

        def forward(encoded: dict[str, np.ndarray]) -> np.ndarray:
            tensors: dict[str, Any] = {
                k: torch.from_numpy(v).to(device) for k, v in encoded.items() if k in input_names
            }
            with torch.inference_mode():
                hidden = model(**tensors).last_hidden_state.float().cpu().numpy()
            return pool(hidden, encoded["attention_mask"], pooling)

        return forward

    async def health(self) -> dict[str, Any]:
        return {**await super().health(), "device": self._config.device}
