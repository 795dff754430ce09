"""What a chunk may hold for a given embedding model: its window in tokens, the share of it left
for text (the window less the special tokens the model adds), and a tokenizer that counts the way
the model does. Ingestion cuts chunks with it so that nothing is truncated; `POST /embeddings`
uses it to split long inputs in the `mean` mode.

Local models (huggingface, onnx) give their own tokenizer (exact); a remote model whose tokenizer
we do not hold is approximated (`RegexTokenizer`) with a margin. Synchronous: a first call may load
a tokenizer, so call it off the event loop. Imports core only; no FastAPI.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from tldw_Server_API.app.core.Chunking import (
    ChunkingOptions,
    OffsetsTokenizer,
    RegexTokenizer,
    chunk_text,
    validate_options,
)
from tldw_Server_API.app.core.config import ChunkingDefaults
from tldw_Server_API.app.core.Embeddings.Embeddings_Server.Embeddings_Create import ProviderRegistry
from tldw_Server_API.app.core.errors import InvalidInput

APPROXIMATE_SHARE = 0.75   # regex tokens undercount subword tokens: leave a quarter of the window free
FALLBACK_WINDOW = 512      # a remote model whose window nobody told us (most embedders read 512)
_WIRE_PARAMS = {"method": "chunk_method", "overlap": "chunk_overlap"}


@dataclass(frozen=True)
class ModelWindow:
    max_tokens: int                # the model's window, special tokens included
    budget: int                    # text tokens a chunk may hold
    tokenizer: OffsetsTokenizer    # counts as the model does (exact) or approximately
    exact: bool

    def check_chunk_size(self, method: str, size: int, model: str) -> None:
        """Refuse an explicit size that cannot fit: tokens beyond the budget, or more words than
        it (a word is at least one token). Sentences and paragraphs cannot be bounded up front."""
        if method in ("tokens", "words") and size > self.budget:
            raise InvalidInput(
                f"chunk_size {size} ({method}) does not fit the window of '{model}': its chunks may hold at most "
                f"{self.budget} tokens ({self.max_tokens} with the model's special tokens); longer chunks would "
                "be truncated", param="chunk_size", code="chunk_size_exceeds_window")


class ModelWindows:
    """`window(model)` per `provider:model` name, cached (the tokenizer loads once per thread)."""

    def __init__(self, registry: ProviderRegistry) -> None:
        self._registry = registry
        self._windows: dict[tuple[str, str], ModelWindow] = {}
        self._lock = threading.Lock()

    def window(self, model: str) -> ModelWindow:
        resolved = self._registry.resolve(model)
        key = (resolved.provider.name, resolved.info.model_id)
        with self._lock:
            found = self._windows.get(key)
        if found is not None:
            return found
        exact = getattr(resolved.provider, "window_tokenizer", None)
        if exact is not None:
            tokenizer, specials = exact(resolved.info.model_id)
            max_tokens = resolved.info.max_tokens or FALLBACK_WINDOW
            made = ModelWindow(max_tokens, max(1, max_tokens - specials), tokenizer, exact=True)
        else:
            max_tokens = resolved.info.max_tokens or FALLBACK_WINDOW
            made = ModelWindow(max_tokens, max(1, int(max_tokens * APPROXIMATE_SHARE)), RegexTokenizer(), exact=False)
        with self._lock:
            return self._windows.setdefault(key, made)


def resolve_chunking(method: str | None, size: int | None, overlap: int | None, defaults: ChunkingDefaults,
                     window: ModelWindow, model: str) -> ChunkingOptions:
    """A caller's chunking options over the configured defaults, for the model that will embed the
    chunks. With `tokens`, the configured default size is lowered to what the model's window holds
    (0: all of it, also when asked explicitly); an explicit size that cannot fit is a 400. Without
    an explicit overlap it is the default one, but at most a fifth of the chunk. Errors name the
    wire fields (`chunk_method`, `chunk_size`, `chunk_overlap`)."""
    method = method or defaults.method
    explicit = size is not None
    if size == 0 and method == "tokens":
        size = window.budget   # 0: the whole window, whatever the model
    if size is None:
        if method != "tokens" and not defaults.max_size:
            raise InvalidInput(f"chunk_method '{method}' needs a chunk_size (the default size is the model's window "
                               "in tokens)", param="chunk_size")
        size = min(defaults.max_size or window.budget, window.budget) if method == "tokens" else defaults.max_size
    if overlap is None:
        overlap = min(defaults.overlap, size // 5) if isinstance(size, int) and not isinstance(size, bool) else 0
    options = ChunkingOptions(method=method, max_size=size, overlap=overlap, max_chunks=defaults.max_chunks)
    try:
        validate_options(options, defaults.max_allowed_size)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, param=_WIRE_PARAMS.get(exc.param or "", exc.param)) from None
    if explicit:
        window.check_chunk_size(method, size, model)
    return options


@dataclass(frozen=True)
class PiecePlan:
    """Texts cut into pieces that fit a window (the `mean` long-input mode): `pieces` in order,
    `groups[i]` the pieces of text i, `weights` each piece's tokens, `pooled` the texts cut."""

    pieces: list[str]
    groups: list[range]
    weights: list[int]
    pooled: tuple[int, ...]

    def owners(self, piece_indexes: Sequence[int]) -> tuple[int, ...]:
        """The texts the given pieces belong to."""
        wanted = set(piece_indexes)
        return tuple(i for i, group in enumerate(self.groups) if wanted.intersection(group))


def _count(tokenizer: OffsetsTokenizer, texts: Sequence[str]) -> list[int]:
    counter = getattr(tokenizer, "count", None)
    return list(counter(texts)) if counter is not None else [len(tokenizer.encode_offsets(t)) for t in texts]


def split_long_inputs(texts: Sequence[str], window: ModelWindow) -> PiecePlan:
    """Each text longer than the window's budget becomes its sentence-aware window-sized pieces
    (the chunker's `tokens` method, no overlap); the others stay whole. Synchronous."""
    pieces: list[str] = []
    groups: list[range] = []
    weights: list[int] = []
    pooled: list[int] = []
    for i, (text, tokens) in enumerate(zip(texts, _count(window.tokenizer, texts), strict=True)):
        first = len(pieces)
        cut = chunk_text(text, ChunkingOptions("tokens", window.budget, 0), window.tokenizer) \
            if tokens > window.budget else []
        if len(cut) > 1:
            parts = [c.text for c in cut]
            pieces += parts
            weights += _count(window.tokenizer, parts)
            pooled.append(i)
        else:
            pieces.append(text)
            weights.append(max(tokens, 1))
        groups.append(range(first, len(pieces)))
    return PiecePlan(pieces, groups, weights, tuple(pooled))
