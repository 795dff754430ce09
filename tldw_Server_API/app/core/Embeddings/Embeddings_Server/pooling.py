"""Pooling of a transformer's token states into one vector per text (torch, no I/O).

mean: attention-masked mean (sentence-transformers' default); cls: first token; lasttoken: the
last real token, correct for both left and right padding (Qwen3 embedding models).
"""

from __future__ import annotations

import torch


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        if bool(attention_mask[:, -1].all()):  # left padding: every row ends with a real token
            return hidden[:, -1]
        last = attention_mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling mode {mode!r}")
