"""Pooling of a transformer's token states into one vector per text (numpy, no I/O), shared by
every local provider: torch and onnxruntime outputs both arrive here as arrays.

mean: attention-masked mean (sentence-transformers' default); cls: first token; lasttoken: the
last real token, correct for both left and right padding (Qwen3 embedding models).
"""

from __future__ import annotations

import numpy as np


def pool(hidden: np.ndarray, attention_mask: np.ndarray, mode: str) -> np.ndarray:
    """hidden (n, seq, d), attention_mask (n, seq) of 0/1 -> (n, d) float32."""
    if mode == "mean":
        mask = attention_mask[:, :, None].astype(hidden.dtype)
        summed = np.einsum("nsd,nsx->nd", hidden, mask)
        return (summed / np.maximum(mask.sum(axis=1), 1e-9)).astype(np.float32, copy=False)
    if mode == "cls":
        return np.ascontiguousarray(hidden[:, 0], dtype=np.float32)
    if mode == "lasttoken":
        if bool(attention_mask[:, -1].all()):  # left padding: every row ends with a real token
            return np.ascontiguousarray(hidden[:, -1], dtype=np.float32)
        last = attention_mask.sum(axis=1) - 1
        return np.ascontiguousarray(hidden[np.arange(hidden.shape[0]), last], dtype=np.float32)
    raise ValueError(f"unknown pooling mode {mode!r}")
