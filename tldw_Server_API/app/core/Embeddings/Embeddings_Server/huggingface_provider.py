"""`huggingface` provider: transformers + torch on the local CPU/GPU, attention-masked pooling
under `torch.inference_mode()` (last-token pooling for Qwen3 embedding models). Model cache,
batching, tokenizers, Qwen3 input handling and the inference threads come from
`LocalModelProvider`; `trust_remote_code` is passed only for trusted model ids.

On a CPU with 2+ cores two forward passes run at once under load and `IntraOpShare` splits
torch's intra-op threads between them (a lone pass, a search query, keeps them all): two
single-threaded passes on 2 cores do ~15 % more than one two-threaded pass, and lose less when
the event loop takes a core, since no thread waits at a barrier for a descheduled sibling.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from tldw_Server_API.app.core.config import BatchingConfig, HuggingFaceConfig, ModelManagerConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_provider import Forward, LocalModelProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_manager import Clock
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


class IntraOpShare:
    """Splits `total` intra-op threads among the forward passes running at once: each pass, as it
    starts or ends, sets `set_threads(total // passes running)` (torch's setting is process-wide,
    so a pass already running follows from its next operation)."""

    def __init__(self, total: int, set_threads: Callable[[int], None]) -> None:
        self.total = max(1, total)
        self._set_threads = set_threads
        self._lock = threading.Lock()
        self._running = 0
        self._current = 0

    def _apply(self) -> None:
        wanted = max(1, self.total // max(1, self._running))
        if wanted != self._current:
            self._set_threads(wanted)
            self._current = wanted

    @contextmanager
    def share(self) -> Iterator[None]:
        with self._lock:
            self._running += 1
            self._apply()
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._apply()   # idle: back to all of them


class HuggingFaceProvider(LocalModelProvider):
    name = "huggingface"

    def __init__(self, config: HuggingFaceConfig, resolver: ModelResolver, batching: BatchingConfig,
                 models: ModelManagerConfig | None = None, prompts_file: Path | None = None, *,
                 clock: Clock = time.monotonic, **kwargs: Any) -> None:
        super().__init__(resolver, batching, models, prompts_file, clock=clock, **kwargs)
        self._config = config
        self._threads: IntraOpShare | None = None   # on CPU, made with the first model

    def parallel_passes(self) -> int:
        """EMBEDDINGS_INFERENCE_WORKERS, else 2 on a CPU with 2+ threads to share and 1 on a GPU."""
        if self._batching.parallel_passes:
            return self._batching.parallel_passes
        on_cpu = self._config.device == "cpu"
        return 2 if on_cpu and (self._config.torch_threads or cpu_cores()) >= 2 else 1

    def _load_forward(self, model_id: str) -> tuple[Forward, int]:
        import torch
        from transformers import AutoModel

        from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pooling import pool

        if self._config.torch_threads:
            torch.set_num_threads(self._config.torch_threads)
        device = self._config.device
        if self._threads is None and device == "cpu":
            self._threads = IntraOpShare(torch.get_num_threads(), torch.set_num_threads)
        threads = self._threads
        model = self._from_pretrained(AutoModel, model_id).to(device).eval()
        size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        input_names = set(inspect.signature(model.forward).parameters)
        extra = {"use_cache": False} if "use_cache" in input_names else {}   # decoder models (Qwen3)
        pooling = self.profile(model_id).pooling

        def forward(encoded: dict[str, np.ndarray]) -> np.ndarray:
            tensors: dict[str, Any] = {
                k: torch.from_numpy(v).to(device) for k, v in encoded.items() if k in input_names
            }
            with torch.inference_mode(), threads.share() if threads is not None else nullcontext():
                hidden = model(**tensors, **extra).last_hidden_state.float().cpu().numpy()
            return pool(hidden, encoded["attention_mask"], pooling)

        return forward, int(size)

    async def health(self) -> dict[str, Any]:
        return {**await super().health(), "device": self._config.device,
                "intra_op_threads": None if self._threads is None else self._threads.total}
