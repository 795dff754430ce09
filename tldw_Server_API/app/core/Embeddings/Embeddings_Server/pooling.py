"""Pooling of a transformer's token states into one vector per text (numpy, no I/O), shared by
every local provider: torch and onnxruntime outputs both arrive here as arrays.

mean: attention-masked mean (sentence-transformers' default); cls: first real token; lasttoken: the
last real token of each row, found from the mask, so left padding (Qwen3 embedding models), right
padding and mixed batches all pool the same token.
"""

from __future__ import annotations

import numpy as np


def pool(hidden: np.ndarray, attention_mask: np.ndarray, mode: str) -> np.ndarray:
    """hidden (n, seq, d), attention_mask (n, seq) of 0/1 -> (n, d) float32."""
    if mode == "mean":
        mask = attention_mask[:, :, None].astype(hidden.dtype)
        summed = np.einsum("nsd,nsx->nd", hidden, mask)
        return (summed / np.maximum(mask.sum(axis=1), 1e-9)).astype(np.float32, copy=False)
    if mode == "cls":  # the first real token (position 0 unless left-padded)
        first = np.argmax(attention_mask != 0, axis=1)
        return np.ascontiguousarray(hidden[np.arange(hidden.shape[0]), first], dtype=np.float32)
    if mode == "lasttoken":
        # The position of each row's last real token, whatever side the padding is on.
        last = attention_mask.shape[1] - 1 - np.argmax(attention_mask[:, ::-1] != 0, axis=1)
        return np.ascontiguousarray(hidden[np.arange(hidden.shape[0]), last], dtype=np.float32)
    raise ValueError(f"unknown pooling mode {mode!r}")
