"""Tokenise-sort-pad-run for the local providers. `next_pass` is the one rule that cuts forward
passes out of length-sorted rows by a padded-token budget (rows x longest row): the fullest pass
that includes a given row. `BatchEncoder` applies it to one list of texts (`encode`) and exposes
the two halves, `tokenize` and `run_rows`, that the micro-batcher schedules itself; `encode`
runs its passes on the provider's pass threads (`PassThreads`), as the micro-batcher does.
Right or left padding (Qwen3; left passes position ids counted from each row's first real
token), and an optional end token appended to rows the tokenizer did not end with it. numpy
only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tldw_Server_API.app.core.Embeddings.Embeddings_Server.provider_types import EmbeddingBatch

if TYPE_CHECKING:
    from tldw_Server_API.app.core.Embeddings.Embeddings_Server.pass_threads import PassThreads

Forward = Callable[[dict[str, np.ndarray]], np.ndarray]  # encoded batch (numpy) -> pooled (n, d) float32


PASS_OVERHEAD_TOKENS = 50   # a pass costs about this many padded tokens on top of its rows (MiniLM, CPU:
                            # ~9 ms fixed against ~0.17 ms per padded token)


def pass_score(tokens: int, rows: int, longest: int, overhead_tokens: int = PASS_OVERHEAD_TOKENS) -> float:
    """Real tokens per unit of work: what a pass of `rows` rows padded to `longest` is worth."""
    return tokens / (overhead_tokens + rows * longest)


def next_pass(lengths: Sequence[int], anchor: int, max_padded_tokens: int, max_rows: int,
              overhead_tokens: int = PASS_OVERHEAD_TOKENS) -> range:
    """The forward pass to run next from rows sorted by length, longest first: the contiguous run
    of rows that includes row `anchor`, keeps rows x longest row within the budget (a row longer
    than the budget runs alone) and does the most real tokens per unit of work (`pass_score`;
    ties: the fewer padded tokens)."""
    if not 0 <= anchor < len(lengths):
        raise IndexError("anchor outside the rows")
    prefix = [0]
    for length in lengths:
        prefix.append(prefix[-1] + length)
    best, best_key = range(anchor, anchor + 1), (-1.0, 0)
    for start in range(anchor, -1, -1):
        longest = max(lengths[start], 1)
        cap = max(1, min(max_rows, max_padded_tokens // longest))
        if start + cap <= anchor:
            break   # wider rows only shrink the pass further: it can no longer reach the anchor
        for end in range(anchor + 1, min(len(lengths), start + cap) + 1):
            rows = end - start
            key = (pass_score(prefix[end] - prefix[start], rows, longest, overhead_tokens), -rows * longest)
            if key > best_key:
                best, best_key = range(start, end), key
    return best


def plan_padded_batches(lengths: Sequence[int], max_padded_tokens: int, max_batch_size: int) -> list[range]:
    """Cut positions of length-sorted (longest first) texts into passes, each the `next_pass`
    of the longest row left."""
    batches, start = [], 0
    while start < len(lengths):
        span = next_pass(lengths[start:], 0, max_padded_tokens, max_batch_size)
        batches.append(range(start, start + len(span)))
        start += len(span)
    return batches


def truncation_limit(max_tokens: int, end_token_id: int | None) -> int:
    """Longest row the tokenizer may return before the end token is appended."""
    return max(1, max_tokens - (end_token_id is not None))


def _direct_backend(tokenizer: Any) -> Any | None:
    """The tokenizer's Rust backend, when calling it directly gives the ids transformers' own call
    would (a fast tokenizer whose special tokens split as configured), with no truncation and no
    padding set: what is left there (tokenizer.json's own settings, a caller's) is cleared, as
    transformers' next call without them would clear it. None: go through transformers' call.
    Why directly: the wrapper costs ~40 us per call (a query's whole tokenisation costs about
    that). Truncating goes through the backend too (`_truncated_ids`), which it leaves as it
    found it: a truncating call through transformers left truncation set, so the count after it
    went through the wrapper again."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return backend


def _untruncated_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens, none truncated."""
    backend = _direct_backend(tokenizer)
    if backend is not None:
        return [encoding.ids for encoding in backend.encode_batch(texts)]
    rows: list[list[int]] = tokenizer(texts, padding=False, return_attention_mask=False,
                                      return_token_type_ids=False)["input_ids"]
    return rows


def _truncated_ids(tokenizer: Any, texts: list[str], limit: int) -> list[list[int]]:
    """Token ids of each text cut to `limit` tokens, special tokens included, as transformers'
    call with `truncation=True, max_length=limit` gives them (longest first, no stride, the
    tokenizer's truncation side); the backend is left without truncation."""
    backend = _direct_backend(tokenizer)
    if backend is None:
        rows: list[list[int]] = tokenizer(texts, truncation=True, max_length=limit, padding=False,
                                          return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        return rows
    backend.enable_truncation(limit, stride=0, strategy="longest_first", direction=tokenizer.truncation_side)
    try:
        return [encoding.ids for encoding in backend.encode_batch(texts)]
    finally:
        backend.no_truncation()


def tokenize_rows(tokenizer: Any, texts: Sequence[str], max_tokens: int | None,
                  end_token_id: int | None = None, long: Sequence[bool] | None = None) -> list[list[int]]:
    """Token ids per text with the tokenizer's special tokens, truncated to `max_tokens` (None:
    not truncated) and, when `end_token_id` is set, ending with it (appended unless present).
    Only texts over the limit go through the tokenizer's own truncation: those flagged in `long`
    (known from an earlier count) directly, the others once their untruncated ids show it."""
    limit = None if max_tokens is None else truncation_limit(max_tokens, end_token_id)
    texts = list(texts)
    known_long = [limit is not None and bool(flag) for flag in (long or [False] * len(texts))]
    rows: list[list[int]] = [[] for _ in texts]
    plain = [i for i, flag in enumerate(known_long) if not flag]
    for i, row in zip(plain, _untruncated_ids(tokenizer, [texts[i] for i in plain]) if plain else [], strict=True):
        rows[i] = row
    over = [i for i, flag in enumerate(known_long) if flag or (limit is not None and len(rows[i]) > limit)]
    if over and limit is not None:
        for i, row in zip(over, _truncated_ids(tokenizer, [texts[i] for i in over], limit), strict=True):
            rows[i] = row
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
    threads: PassThreads | None = None    # where `encode` runs its passes (None: the caller's thread, in turn)

    def tokenize(self, texts: Sequence[str], tokenizer: Any | None = None,
                 long: Sequence[bool] | None = None) -> list[list[int]]:
        """Token ids per text as the model takes them (truncated, end token); `tokenizer` lets
        another thread use its own instance of the same tokenizer; `long` flags texts known to
        be over the window."""
        return tokenize_rows(tokenizer or self.tokenizer, texts, self.max_tokens, self.end_token_id, long)

    def untruncated(self, row: Sequence[int]) -> bool:
        """Whether `row`, tokenised without truncation (and with the end token), is exactly what
        `tokenize` gives: no truncation applies to it."""
        return len(row) <= truncation_limit(self.max_tokens, self.end_token_id)

    def run_rows(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """One forward pass over token rows: padded to the longest, pooled (n, d) float32."""
        pad_id = self.tokenizer.pad_token_id or 0
        encoded = pad_rows(rows, pad_id, max(len(row) for row in rows), left=self.padding_side == "left")
        return self.forward(encoded)

    def encode(self, texts: Sequence[str]) -> EmbeddingBatch:
        token_ids = self.tokenize(texts)
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]), reverse=True)
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        passes = [[order[j] for j in span] for span in plan_padded_batches(
            [len(token_ids[i]) for i in order], self.max_padded_tokens, self.batch_size)]

        def run(rows: list[int]) -> None:
            vectors[rows] = self.run_rows([token_ids[i] for i in rows])

        if self.threads is not None:
            self.threads.run_all(run, passes)
        else:
            for rows in passes:
                run(rows)
        return EmbeddingBatch(vectors=vectors, token_counts=[len(row) for row in token_ids])
