"""Export of a transformers encoder to ONNX (`last_hidden_state` output, dynamic batch and
sequence axes) and int8 dynamic quantisation. Files are written atomically (temp file + rename),
so concurrent exporters in several processes never leave a torn file behind.

The quantisation recipe is the one measured best here (FACTS.md): MatMul only, per-channel,
signed int8 weights -- the defaults lose too much accuracy (mean cosine 0.946).
"""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path
from typing import Any

OPSET = 17


def _atomic_target(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")


def export_onnx(model_path: Path, output: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.local_provider import quiet_transformers
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pass_threads import single_threaded_torch

    quiet_transformers()
    single_threaded_torch()   # a provider's loading thread: never a second wide OpenMP pool
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModel.from_pretrained(str(model_path), attn_implementation="eager").eval()
    sample = tokenizer(["an example sentence", "two"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class _LastHiddenState(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> Any:
            return self.inner(**dict(zip(names, args, strict=True))).last_hidden_state

    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    tmp = _atomic_target(output)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _LastHiddenState(model), tuple(sample[n] for n in names), str(tmp), input_names=names,
                output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=OPSET, dynamo=False,
            )
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def quantize_int8(source: Path, output: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = _atomic_target(output)
    try:
        quantize_dynamic(str(source), str(tmp), op_types_to_quantize=["MatMul"], per_channel=True,
                         weight_type=QuantType.QInt8)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
