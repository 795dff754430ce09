"""`onnx` provider: onnxruntime on the CPU, over a graph exported from the model's transformers
weights on first use (or on the admin download route) and cached under the model storage root,
one export per weights revision.

Variants: `<model>@fp32` and `<model>@int8` (dynamic int8 quantisation); a bare `<model>` uses
EMBEDDINGS_ONNX_QUANTIZE. Pooling, batching and the pass threads are shared with the other
local providers (`LocalModelProvider`).

Threads: an onnxruntime session's intra-op pool has a fixed width, so with EMBEDDINGS_ONNX_THREADS
0 (auto) on a CPU with 2+ cores a model gets two sessions over one graph: a wide one (every
core) for a pass alone on the model (on the lone-pass thread or inline: a search query, a long
text on an idle server) and a single-threaded one that the `parallel_passes()` (2) shared
threads run side by side under load.
Measured on a 2-vCPU Xeon: side by side single-threaded passes did 15-20 % more through HTTP
(fp32 5,890 -> 6,778 tok/s, int8 10,300 -> 12,506) and lost less to the event loop (int8 0.82x ->
0.90x its engine), while a lone 256-token text still runs wide (45 vs 69 ms single-threaded).
The weights are held twice (the model's cache entry counts both). A set thread count means one
session of that width and one pass at a time (unless EMBEDDINGS_INFERENCE_WORKERS says more).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from tldw_Server_API.app.core.config import BatchingConfig, ModelManagerConfig, OnnxConfig
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_provider import Forward, LocalModelProvider
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_manager import Clock
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.model_resolution import ModelResolver
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pass_threads import cpu_cores
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.provider_types import ModelInfo


def session_options(threads: int) -> Any:
    """onnxruntime options of one engine session: `threads` intra-op threads (0: its default), one
    inter-op thread, no spinning between passes, and no memory pattern: onnxruntime records an
    allocation plan per distinct input shape it sees, and passes come in many (rows x longest row)
    shapes, so with it the process grew for as long as new shapes came (MiniLM, random passes of up
    to 1,024 padded tokens: +50 -> +70 MB over 400 passes and rising, against a flat +36 MB without
    it, at the same speed; in the memory soak, where uploads embed on onnx, it was not the main
    growth: bench/README.md)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_mem_pattern = False
    return options


class OnnxProvider(LocalModelProvider):
    name = "onnx"
    variants = ("fp32", "int8")

    def __init__(self, config: OnnxConfig, resolver: ModelResolver, batching: BatchingConfig,
                 models: ModelManagerConfig | None = None, prompts_file: Path | None = None, *,
                 clock: Clock = time.monotonic, **kwargs: Any) -> None:
        super().__init__(resolver, batching, models, prompts_file, clock=clock, **kwargs)
        self._config = config
        self._onnx_root = resolver.model_dir / "onnx"

    def _default_parallel_passes(self) -> int:
        """2 on 2+ cores with EMBEDDINGS_ONNX_THREADS auto (a wide session for lone passes, a
        single-threaded one shared by these), else 1."""
        return 2 if not self._config.threads and cpu_cores() >= 2 else 1

    def _split_sessions(self) -> bool:
        """Two sessions (wide for the lone thread, single-threaded for the shared ones)."""
        return not self._config.threads and self.parallel_passes() > 1

    def _session_threads(self) -> tuple[int, int]:
        """Intra-op threads of the (lone, shared) sessions; 0: onnxruntime's default."""
        return (cpu_cores(), 1) if self._split_sessions() else (self._config.threads, self._config.threads)

    def default_variant(self) -> str:
        """EMBEDDINGS_ONNX_QUANTIZE: a bare `<id>` shares the session of `<id>@<variant>`."""
        return self._config.quantize

    def engine_id(self, model_id: str) -> str:
        base, variant = self.split_variant(model_id)
        return f"{base}@{variant}"

    def graph_path(self, model_id: str) -> Path:
        """`onnx/<org--name>/<revision>/model.<variant>.onnx`: a new revision of the weights gets
        its own export, never a stale one ("local" when the revision is unknown)."""
        base, variant = self.split_variant(model_id)
        revision = re.sub(r"[^A-Za-z0-9_.-]", "_", self.model_revision(model_id)) or "local"
        return self._onnx_root / base.strip("/").replace("/", "--") / revision / f"model.{variant}.onnx"

    def ensure_exported(self, model_id: str) -> Path:
        """Export (and quantise) once; later calls and later processes reuse the files."""
        from tldw_Server_API.app.core.Embeddings.Embeddings_Server.onnx_export import export_onnx, quantize_int8

        target = self.graph_path(model_id)
        fp32 = target.with_name("model.fp32.onnx")
        if not fp32.is_file():
            export_onnx(self.model_path(model_id), fp32)
        if target != fp32 and not target.is_file():
            quantize_int8(fp32, target)
        return target

    def _estimate_bytes(self, model_id: str) -> int:
        graph = self.graph_path(model_id)
        size = graph.stat().st_size if graph.is_file() else super()._estimate_bytes(model_id)
        return size * (2 if self._split_sessions() else 1)

    def _load_forward(self, model_id: str) -> tuple[Forward, int]:
        import onnxruntime as ort

        from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pooling import pool

        graph = self.ensure_exported(model_id)

        def session(threads: int) -> Any:
            return ort.InferenceSession(str(graph), session_options(threads), providers=["CPUExecutionProvider"])

        split = self._split_sessions()
        lone_threads, shared_threads = self._session_threads()
        wide = session(lone_threads)
        narrow = session(shared_threads) if split else wide
        threads = self._passes()
        input_names = {i.name for i in wide.get_inputs()}
        pooling = self.profile(model_id).pooling

        def forward(encoded: dict[str, np.ndarray]) -> np.ndarray:
            feeds = {k: v.astype(np.int64, copy=False) for k, v in encoded.items() if k in input_names}
            # narrow on the shared pass threads; wide for a pass alone (the lone thread, or inline on
            # the event loop: a session's pool is its own, not the calling thread's)
            shared = threads.on_pass_thread() and not threads.on_lone_thread()
            hidden = (narrow if shared else wide).run(["last_hidden_state"], feeds)[0]
            return pool(hidden, encoded["attention_mask"], pooling)

        return forward, self._estimate_bytes(model_id)   # exported now: the graph's size, per session

    async def download(self, model_id: str) -> ModelInfo:
        """The transformers weights (hub download when needed), then the exported graph."""
        info = await super().download(model_id)
        await self._run(self.ensure_exported, model_id)
        return info

    async def health(self) -> dict[str, Any]:
        lone_threads, shared_threads = self._session_threads()
        return {**await super().health(), "default_variant": self._config.quantize,
                "session_threads": {"lone": lone_threads or None, "shared": shared_threads or None}}
