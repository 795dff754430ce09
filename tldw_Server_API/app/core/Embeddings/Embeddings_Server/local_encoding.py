"""Tokenise-sort-pad-run for the local providers: `BatchEncoder` cuts length-sorted batches by a
padded-token budget and runs one forward function (torch or onnxruntime) over them. Right or left
padding (Qwen3; left passes position ids counted from each row's first real token), and an
optional end token appended to rows the tokenizer did not end with it. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import EmbeddingBatch

Forward = Callable[[dict[str, np.ndarray]], np.ndarray]  # encoded batch (numpy) -> pooled (n, d) float32


def plan_padded_batches(lengths: Sequence[int], max_padded_tokens: int, max_batch_size: int) -> list[range]:
    """Cut positions of length-sorted (longest first) texts into batches whose padded size
    (rows x longest row) stays within the budget; a text longer than the budget runs alone."""
    batches, start = [], 0
    while start < len(lengths):
        longest = max(lengths[start], 1)
        size = max(1, min(max_batch_size, max_padded_tokens // longest, len(lengths) - start))
        batches.append(range(start, start + size))
        start += size
    return batches


def tokenize_rows(tokenizer: Any, texts: Sequence[str], max_tokens: int | None,
                  end_token_id: int | None = None) -> list[list[int]]:
    """Token ids per text with the tokenizer's special tokens, truncated to `max_tokens` (None:
    not truncated) and, when `end_token_id` is set, ending with it (appended unless present)."""
    limit = None if max_tokens is None else max(1, max_tokens - (end_token_id is not None))
    rows: list[list[int]] = tokenizer(
        list(texts), truncation=limit is not None, max_length=limit, padding=False,
        return_attention_mask=False, return_token_type_ids=False,
    )["input_ids"]
    if end_token_id is None:
        return rows
    return [row if row and row[-1] == end_token_id else [*row, end_token_id] for row in rows]


def find_end_token_id(tokenizer: Any, token: str | None) -> int | None:
    """The id of `token` in the tokenizer's vocabulary, else its EOS id; None when no token is wanted."""
    if token is None:
        return None
    if token in tokenizer.get_vocab():
        return int(tokenizer.convert_tokens_to_ids(token))
    return None if tokenizer.eos_token_id is None else int(tokenizer.eos_token_id)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, width: int, left: bool) -> dict[str, np.ndarray]:
    """Padded ids, attention mask, zero token types and (left padding) position ids."""
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[r, span], mask[r, span] = row, 1
    encoded = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    if left:
        encoded["position_ids"] = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    return encoded


@dataclass
class BatchEncoder:
    """Tokenise once, sort by token length, run batches cut by a padded-token budget; rows come
    back in input order."""

    tokenizer: Any
    forward: Forward
    max_tokens: int
    dimension: int
    batch_size: int
    max_padded_tokens: int
    padding_side: str = "right"           # "left" for Qwen3 embedding models
    end_token_id: int | None = None       # appended to rows not ending with it (Qwen3)

    def encode(self, texts: Sequence[str]) -> EmbeddingBatch:
        token_ids = tokenize_rows(self.tokenizer, texts, self.max_tokens, self.end_token_id)
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]), reverse=True)
        pad_id = self.tokenizer.pad_token_id or 0
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for span in plan_padded_batches([len(token_ids[i]) for i in order], self.max_padded_tokens,
                                        self.batch_size):
            rows = [order[j] for j in span]
            encoded = pad_rows([token_ids[i] for i in rows], pad_id, len(token_ids[rows[0]]),
                               left=self.padding_side == "left")
            vectors[rows] = self.forward(encoded)
        return EmbeddingBatch(vectors=vectors, token_counts=[len(row) for row in token_ids])
