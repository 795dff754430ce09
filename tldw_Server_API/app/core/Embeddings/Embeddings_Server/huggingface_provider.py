"""`huggingface` provider: transformers + torch on the local CPU/GPU, attention-masked pooling
under `torch.inference_mode()` (last-token pooling for Qwen3 embedding models). Model cache,
batching, tokenizers, Qwen3 input handling and the inference threads come from
`LocalModelProvider`; `trust_remote_code` is passed only for trusted model ids. BERT-family
encoders run unpadded (`unpadded_encoder`) unless EMBEDDINGS_UNPADDED_ENCODER=false.

On a CPU with 2+ cores two forward passes run at once under load and `IntraOpShare` splits
torch's intra-op threads between them (a lone pass, a search query, takes them all, on the one
lone-pass thread: `pass_threads`): two single-threaded passes on 2 cores do ~15 % more than one
two-threaded pass, and lose less when the event loop takes a core, since no thread waits at a
barrier for a descheduled sibling. With more than one intra-op thread no pass runs on the event
loop's thread: it would own a second wide OpenMP pool.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from tldw_Server_API.app.core.config import BatchingConfig, HuggingFaceConfig, ModelManagerConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_provider import (
    BatchEncoder,
    Forward,
    LocalModelProvider,
)
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_manager import Clock
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pass_threads import cpu_cores, single_threaded_torch


class IntraOpShare:
    """Gives each forward pass its intra-op threads out of `total`, as it starts. torch's thread
    count (OpenMP's and MKL's) belongs to the thread that sets it: a pass keeps the count it
    started with and nothing outside its thread can change it. So the passes running never hold
    more than `total` between them: a pass that is alone -- none other running or waiting -- takes
    them all (a lone search query runs at full width), any other takes `total // slots`, waiting
    if need be for a lone pass to end rather than oversubscribe the cores (one pass at most; under
    load rare, since a pass is never alone while another waits). A pass that waited keeps its
    share, so two workers never fall into taking turns at full width. Only a thread for which
    `wide()` holds (the lone-pass thread) is ever given more than the share: every thread that
    once ran wide keeps an OpenMP pool, and more pooled threads than CPUs make every operator
    wait for a sleeping worker (`pass_threads`). `set_threads` runs in the pass's own thread,
    only when its count changes."""

    def __init__(self, total: int, slots: int, set_threads: Callable[[int], None],
                 wide: Callable[[], bool] = lambda: True) -> None:
        self.total = max(1, total)
        self.slots = max(1, slots)
        self._set_threads = set_threads
        self._wide = wide
        self._changed = threading.Condition()
        self._in_use = 0          # threads held by passes running
        self._passes = 0          # passes running or waiting for threads
        self._local = threading.local()

    @property
    def passes(self) -> int:
        return self._passes

    @property
    def shared_width(self) -> int:
        """Threads of a pass that has company (or runs off the lone thread)."""
        return max(1, self.total // self.slots)

    @contextmanager
    def share(self) -> Iterator[int]:
        """Hold this pass's threads for the block, set in the calling thread; yields their number."""
        with self._changed:
            self._passes += 1
            wanted = self.total if self._passes == 1 and self._wide() else self.shared_width
            while self._in_use + wanted > self.total:   # a pass that had to wait has company: it
                self._changed.wait()                     # keeps its share, so passes interleave
            self._in_use += wanted
        try:
            if getattr(self._local, "threads", None) != wanted:
                self._set_threads(wanted)
                self._local.threads = wanted
            yield wanted
        finally:
            with self._changed:
                self._in_use -= wanted
                self._passes -= 1
                self._changed.notify_all()


class HuggingFaceProvider(LocalModelProvider):
    name = "huggingface"
    # `@bf16`: bf16 matmuls (the unpadded encoder's linears hold bf16 weights; other models run under
    # torch autocast), norms and softmax stay fp32; fast on CPUs with AVX-512 BF16 or AMX, emulated
    # (slow) elsewhere
    variants = ("fp32", "bf16")

    def __init__(self, config: HuggingFaceConfig, resolver: ModelResolver, batching: BatchingConfig,
                 models: ModelManagerConfig | None = None, prompts_file: Path | None = None, *,
                 clock: Clock = time.monotonic, **kwargs: Any) -> None:
        super().__init__(resolver, batching, models, prompts_file, clock=clock, **kwargs)
        self._config = config
        self._threads: IntraOpShare | None = None   # on CPU, made with the first model
        self._unpadded: set[str] = set()            # models loaded with the unpadded encoder
        # a loaded unpadded model's `UnpaddedEncoder.prime`, by its forward (gone with its encoder)
        self._primers: weakref.WeakKeyDictionary[Forward, Callable[[int], None]] = weakref.WeakKeyDictionary()
        self._primed: set[str] = set()              # loaded models whose primitives warm-up made

    def intra_op_threads(self) -> int:
        """Threads the passes share on CPU: EMBEDDINGS_TORCH_THREADS, else the cores this process may
        run on. Not torch.get_num_threads(): that is the calling thread's count, and any
        torch.set_num_threads() in the process (a pass's own) changes what new threads start with."""
        return self._config.torch_threads or cpu_cores()

    def _default_parallel_passes(self) -> int:
        """2 on a CPU with 2+ threads to share, 1 on a GPU."""
        on_cpu = self._config.device == "cpu"
        return 2 if on_cpu and self.intra_op_threads() >= 2 else 1

    def _load_forward(self, model_id: str) -> tuple[Forward, int]:
        import torch
        from transformers import AutoModel

        from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pooling import pool
        from tldw_Server_API.app.core.Embeddings.Embeddings_Server.unpadded_encoder import (
            held_weight_bytes,
            unpadded_forward,
        )

        device = self._config.device
        if self._threads is None and device == "cpu":
            self._threads = IntraOpShare(self.intra_op_threads(), self.parallel_passes(), torch.set_num_threads,
                                         wide=self._passes().on_lone_thread)
        threads = self._threads
        if threads is not None:
            single_threaded_torch()   # the loading thread: never a second wide OpenMP pool
        model = self._from_pretrained(AutoModel, model_id).to(device).eval()
        size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        input_names = set(inspect.signature(model.forward).parameters)
        extra = {"use_cache": False} if "use_cache" in input_names else {}   # decoder models (Qwen3)
        pooling = self.profile(model_id).pooling
        bf16 = self.precision(model_id) == "bf16"
        linear_dtype = torch.bfloat16 if bf16 else None
        unpadded = unpadded_forward(model, linear_dtype) if self._config.unpadded else None
        (self._unpadded.add if unpadded is not None else self._unpadded.discard)(model_id)
        self._primed.discard(model_id)
        if unpadded is not None:   # it holds its own copies of the layers' weights: not twice
            size += held_weight_bytes(model, linear_dtype)
            size -= unpadded.release_module_weights()

        def forward(encoded: dict[str, np.ndarray]) -> np.ndarray:
            tensors: dict[str, Any] = {
                k: torch.from_numpy(v).to(device) for k, v in encoded.items() if k in input_names
            }
            autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if bf16 else nullcontext()
            with torch.inference_mode(), threads.share() if threads is not None else nullcontext(), autocast:
                if unpadded is not None:
                    states = unpadded(tensors["input_ids"], tensors["attention_mask"],
                                      tensors.get("token_type_ids"), tensors.get("position_ids"))
                else:
                    states = model(**tensors, **extra).last_hidden_state
                hidden = states.float().cpu().numpy()
            return pool(hidden, encoded["attention_mask"], pooling)

        if unpadded is not None and threads is not None:
            self._primers[forward] = unpadded.prime
        return forward, int(size)

    async def _prime(self, model_id: str, encoder: BatchEncoder) -> None:
        """A CPU model on the unpadded encoder: make oneDNN's primitives for every token-matrix
        size a pass within the batch budget runs on (`row_sizes(EMBEDDINGS_LOCAL_BATCH_TOKENS)`,
        40 at the default 1,024; a single text longer than the budget makes its own on first
        sight), at both widths a pass runs at (the lone thread's and a shared one's: oneDNN keys a
        primitive by its thread count too), so the primitive cache is filled at warm-up, not
        shape by shape under load (where each new shape costs a JIT compile inside a request and
        the server's memory climbed for minutes). One size at a time, each holding its threads
        like a pass, so live traffic interleaves; once per loaded model; a failure is logged."""
        prime, threads = self._primers.get(encoder.forward), self._threads
        if prime is None or threads is None:
            return
        import torch

        from tldw_Server_API.app.core.Embeddings.Embeddings_Server.unpadded_encoder import row_sizes

        sizes = row_sizes(encoder.max_padded_tokens)

        def run() -> None:
            for rows in sizes:
                with torch.inference_mode(), threads.share():
                    prime(rows)

        passes = self._passes()
        try:
            await asyncio.wrap_future(passes.lone(run))
            if passes.parallel > 1 and threads.shared_width != threads.total:
                await asyncio.wrap_future(passes.shared(run))
        except Exception as exc:   # an optimisation (the passes make them anyway): never fatal
            logger.warning("{}: oneDNN primitives not made at warm-up for {}: {}: {}", self.name, model_id,
                           type(exc).__name__, exc)
            return
        self._primers.pop(encoder.forward, None)
        self._primed.add(model_id)

    def inline_capable(self) -> bool:
        """Not with torch's intra-op threads above one on the CPU: the event loop's thread would
        own a second wide OpenMP pool (`pass_threads`)."""
        return self._config.device != "cpu" or self.intra_op_threads() <= 1

    async def health(self) -> dict[str, Any]:
        return {**await super().health(), "device": self._config.device,
                "intra_op_threads": None if self._threads is None else self._threads.total,
                "unpadded_models": [m for m in self.loaded_models() if m in self._unpadded],
                "primed_models": [m for m in self.loaded_models() if m in self._primed]}
