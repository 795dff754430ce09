"""`onnx` provider: onnxruntime on the CPU, over a graph exported from the model's transformers
weights on first use (or on the admin download route) and cached under the model storage root,
one export per weights revision.

Variants: `<model>@fp32` and `<model>@int8` (dynamic int8 quantisation); a bare `<model>` uses
EMBEDDINGS_ONNX_QUANTIZE. Pooling, batching and the inference thread are shared with the other
local providers (`LocalModelProvider`).
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
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.provider_types import ModelInfo


class OnnxProvider(LocalModelProvider):
    name = "onnx"
    variants = ("fp32", "int8")

    def __init__(self, config: OnnxConfig, resolver: ModelResolver, batching: BatchingConfig,
                 models: ModelManagerConfig | None = None, prompts_file: Path | None = None, *,
                 clock: Clock = time.monotonic, **kwargs: Any) -> None:
        super().__init__(resolver, batching, models, prompts_file, clock=clock, **kwargs)
        self._config = config
        self._onnx_root = resolver.model_dir / "onnx"

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
        return graph.stat().st_size if graph.is_file() else super()._estimate_bytes(model_id)

    def _load_forward(self, model_id: str) -> tuple[Forward, int]:
        import onnxruntime as ort

        from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pooling import pool

        options = ort.SessionOptions()
        if self._config.threads:
            options.intra_op_num_threads = self._config.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        graph = self.ensure_exported(model_id)
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        input_names = {i.name for i in session.get_inputs()}
        pooling = self.profile(model_id).pooling

        def forward(encoded: dict[str, np.ndarray]) -> np.ndarray:
            feeds = {k: v.astype(np.int64, copy=False) for k, v in encoded.items() if k in input_names}
            hidden = session.run(["last_hidden_state"], feeds)[0]
            return pool(hidden, encoded["attention_mask"], pooling)

        return forward, graph.stat().st_size

    async def download(self, model_id: str) -> ModelInfo:
        """The transformers weights (hub download when needed), then the exported graph."""
        info = await super().download(model_id)
        await self._run(self.ensure_exported, model_id)
        return info

    async def health(self) -> dict[str, Any]:
        return {**await super().health(), "default_variant": self._config.quantize}
