"""Pure text chunking. `words`, `sentences` and `paragraphs` slide a window of `max_size` units with
`overlap` units shared between neighbours; `tokens` packs whole sentences into chunks of at most
`max_size` tokens of the caller's tokenizer (the embedding model's own: `packing.py`). Every chunk is
a slice of the original text (`text == original[start_char:end_char]`, Python str indices), trimmed
of edge whitespace. Imports only the standard library and core errors/config; no I/O, no model
loading (a tokenizer object is passed in by the caller).
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from tldw_Server_API.app.core.Chunking.packing import pack_units, sentence_units
from tldw_Server_API.app.core.config import ChunkingDefaults
from tldw_Server_API.app.core.errors import InvalidInput, PayloadTooLarge

ChunkMethod = Literal["words", "sentences", "paragraphs", "tokens"]
CHUNK_METHODS: tuple[str, ...] = get_args(ChunkMethod)

Span = tuple[int, int]

# Scripts written without spaces (Han, kana) count one word per character, so a Chinese or Japanese
# text still gets bounded chunks; everything else is split on whitespace.
_SPACELESS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(rf"[{_SPACELESS}]|[^\s{_SPACELESS}]+")
# A sentence ends with Latin terminators (plus closing quotes/brackets) followed by whitespace, with
# CJK terminators (no space needed), or at a blank line. Single newlines do not end a sentence:
# plain-text files are often hard-wrapped. Heuristic: "Dr. Smith" splits after "Dr.".
_SENTENCE_CUT = re.compile(
    r"[.!?\u2026\u203c\u2047-\u2049]+[\"'\u201d\u2019\u00bb)\]}]*(?=\s)"
    r"|[\u3002\uff01\uff1f\uff61]+[\u300d\u300f\u201d\u2019\uff09)\]]*"
    r"|\n\s*\n|\u2029"
)
_PARAGRAPH_CUT = re.compile(r"\n\s*\n|\u2029")
_CJK = _SPACELESS + "\uac00-\ud7af"  # plus Hangul syllables: roughly a token each
_APPROX_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|\S")


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str
    start_char: int  # inclusive, Python str index into the original text
    end_char: int  # exclusive
    page: int | None = None  # 1-based page the chunk starts on, when the source has pages (PDF)


@dataclass(frozen=True)
class ChunkingOptions:
    """`max_size` and `overlap` are counted in the method's units (words, sentences, paragraphs or
    tokens). A sentence or paragraph is never cut, so a chunk's length in characters is unbounded."""

    method: str = "words"
    max_size: int = 1000
    overlap: int = 200
    max_chunks: int | None = None   # more chunks than this: PayloadTooLarge, before any is made

    @classmethod
    def from_defaults(cls, defaults: ChunkingDefaults) -> ChunkingOptions:
        return cls(method=defaults.method, max_size=defaults.max_size, overlap=defaults.overlap)


class OffsetsTokenizer(Protocol):
    """What the `tokens` method needs: the (start, end) character span of each token of `text`.
    Spans may be empty (special tokens), overlap, or include whitespace; chunking cleans them."""

    def encode_offsets(self, text: str) -> list[tuple[int, int]]: ...


class CountingTokenizer(OffsetsTokenizer, Protocol):
    """A tokenizer that also counts the tokens of texts as they are encoded on their own (no
    special tokens): `chunk_text` re-counts each `tokens` chunk with it, so a boundary effect of
    the tokenizer (a BPE merge across the cut) can never leave a chunk over its budget."""

    def count(self, texts: Sequence[str]) -> list[int]: ...


class RegexTokenizer:
    """Approximate tokens when no model tokenizer is at hand: a run of word characters, one CJK
    character, or one other non-space character per token. Counts are close to (usually below) a
    WordPiece/BPE tokenizer's for English; pass the model's tokenizer when exact budgets matter."""

    def encode_offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _APPROX_TOKEN.finditer(text)]


class HFOffsetsTokenizer:
    """Adapts a Hugging Face *fast* tokenizer (`tokenizer.is_fast`), whose `__call__` returns an
    `offset_mapping`, to `OffsetsTokenizer`. Special tokens are not added."""

    def __init__(self, tokenizer: Any) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("token chunking needs a fast tokenizer (offset mappings)")
        self._tokenizer = tokenizer

    def encode_offsets(self, text: str) -> list[tuple[int, int]]:
        encoded = self._tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False, verbose=False
        )
        return [(int(start), int(end)) for start, end in encoded["offset_mapping"]]

    def count(self, texts: Sequence[str]) -> list[int]:
        encoded = self._tokenizer(
            list(texts), add_special_tokens=False, return_attention_mask=False, verbose=False
        )
        return [len(ids) for ids in encoded["input_ids"]]


class ThreadLocalHFTokenizer:
    """An HF fast tokenizer per thread (one instance cannot be used from two threads at once:
    "Already borrowed"), loaded on first use in each thread by `load`."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load = load
        self._local = threading.local()

    def _adapter(self) -> HFOffsetsTokenizer:
        adapter = getattr(self._local, "adapter", None)
        if adapter is None:
            adapter = self._local.adapter = HFOffsetsTokenizer(self._load())
        return adapter

    def encode_offsets(self, text: str) -> list[tuple[int, int]]:
        return self._adapter().encode_offsets(text)

    def count(self, texts: Sequence[str]) -> list[int]:
        return self._adapter().count(texts)


def validate_options(options: ChunkingOptions, max_allowed_size: int | None = None) -> None:
    """Raise InvalidInput naming the wire field (`method`, `chunk_size`, `overlap`) of a bad option."""
    if options.method not in CHUNK_METHODS:
        raise InvalidInput(f"chunking method must be one of {', '.join(CHUNK_METHODS)}", param="method")
    if isinstance(options.max_size, bool) or not isinstance(options.max_size, int) or options.max_size <= 0:
        raise InvalidInput("chunk_size must be a positive integer", param="chunk_size")
    if max_allowed_size is not None and options.max_size > max_allowed_size:
        raise InvalidInput(f"chunk_size must be at most {max_allowed_size}", param="chunk_size")
    if isinstance(options.overlap, bool) or not isinstance(options.overlap, int) or options.overlap < 0:
        raise InvalidInput("overlap must be a non-negative integer", param="overlap")
    if options.overlap >= options.max_size:
        raise InvalidInput("overlap must be smaller than chunk_size", param="overlap")


def chunk_text(text: str, options: ChunkingOptions, tokenizer: OffsetsTokenizer | None = None) -> list[Chunk]:
    """Chunks of `text` in order, indexed from 0. Empty or whitespace-only text gives []. The
    `tokens` method uses `tokenizer` (default: `RegexTokenizer`, an approximation)."""
    validate_options(options)
    spans = unit_spans(text, options.method, tokenizer)
    if options.method == "tokens":
        return _token_chunks(text, spans, options, tokenizer)
    _check_chunk_count(window_count(len(spans), options.max_size, options.overlap), options)
    return window_chunks(text, spans, options.max_size, options.overlap)


def _check_chunk_count(count: int, options: ChunkingOptions) -> None:
    if options.max_chunks is not None and count > options.max_chunks:
        raise PayloadTooLarge(
            f"the text makes {'at least ' if options.method == 'tokens' else ''}{count} chunks of "
            f"{options.max_size} {options.method}; at most {options.max_chunks} are allowed per media item "
            "(CHUNKING_MAX_CHUNKS): use a larger chunk_size", param="chunk_size")


def _token_chunks(text: str, tokens: Sequence[Span], options: ChunkingOptions,
                  tokenizer: OffsetsTokenizer | None) -> list[Chunk]:
    budget = options.max_size
    _check_chunk_count(-(-len(tokens) // budget), options)   # a lower bound, before any chunk is made
    units = sentence_units(text, _cut_spans(text, _SENTENCE_CUT), tokens, budget)
    spans = [(units[first].start, units[stop - 1].end) for first, stop in pack_units(units, budget, options.overlap)]
    count = getattr(tokenizer, "count", None)
    if count is not None:   # re-count each chunk on its own; re-cut any a boundary effect pushed over
        spans = [piece for span, n in zip(spans, count([text[a:b] for a, b in spans]), strict=True)
                 for piece in ([span] if n <= budget else _recut(text, span, tokens, budget))]
    _check_chunk_count(len(spans), options)
    return [Chunk(index=i, text=text[a:b], start_char=a, end_char=b) for i, (a, b) in enumerate(spans)]


def _recut(text: str, span: Span, tokens: Sequence[Span], budget: int) -> list[Span]:
    """Token windows with a margin, for the rare chunk a tokenizer counts higher on its own."""
    inside = [t for t in tokens if span[0] <= t[0] < span[1]]
    size = max(1, budget - max(2, budget // 16))
    return [(c.start_char, c.end_char) for c in window_chunks(text, inside, size, 0)]


def chunk_document(text: str, options: ChunkingOptions, tokenizer: OffsetsTokenizer | None = None,
                   page_starts: Sequence[int] | None = None) -> list[Chunk]:
    """`chunk_text`, each chunk with the page it starts on when the source has pages."""
    return assign_pages(chunk_text(text, options, tokenizer), page_starts)


def assign_pages(chunks: Sequence[Chunk], page_starts: Sequence[int] | None) -> list[Chunk]:
    """Each chunk with the 1-based page it starts on; `page_starts[i]` is where page i + 1 starts
    in the text (ascending). None or empty: chunks unchanged (the source has no pages)."""
    if not page_starts:
        return list(chunks)
    return [Chunk(c.index, c.text, c.start_char, c.end_char, max(1, bisect_right(page_starts, c.start_char)))
            for c in chunks]


def window_count(units: int, max_size: int, overlap: int) -> int:
    """How many windows `window_chunks` makes of `units` spans."""
    if units == 0:
        return 0
    step = max_size - overlap
    return 1 + max(0, -(-(units - max_size) // step))


def unit_spans(text: str, method: str, tokenizer: OffsetsTokenizer | None = None) -> list[Span]:
    """The units of `method` as sorted (start, end) spans, each non-empty and trimmed of whitespace."""
    if method == "words":
        return [m.span() for m in _WORD.finditer(text)]
    if method == "sentences":
        return _cut_spans(text, _SENTENCE_CUT)
    if method == "paragraphs":
        return _cut_spans(text, _PARAGRAPH_CUT)
    if method == "tokens":
        offsets = (tokenizer or RegexTokenizer()).encode_offsets(text)
        return _clean_token_spans(text, offsets)
    raise InvalidInput(f"chunking method must be one of {', '.join(CHUNK_METHODS)}", param="method")


def window_chunks(text: str, spans: Sequence[Span], max_size: int, overlap: int) -> list[Chunk]:
    """Windows of `max_size` spans starting every `max_size - overlap` spans; the last may be shorter.
    Neighbouring windows share exactly `overlap` spans. Spans must be sorted by start."""
    count = len(spans)
    if count == 0:
        return []
    # Token spans may overlap; a running maximum keeps every chunk end at or after its spans' ends.
    ends: list[int] = []
    furthest = 0
    for _, end in spans:
        furthest = max(furthest, end)
        ends.append(furthest)
    step = max_size - overlap
    chunks: list[Chunk] = []
    first = 0
    while True:
        last = min(first + max_size, count)
        start, end = spans[first][0], ends[last - 1]
        chunks.append(Chunk(index=len(chunks), text=text[start:end], start_char=start, end_char=end))
        if last == count:
            return chunks
        first += step


def _trimmed(text: str, start: int, end: int) -> Span | None:
    piece = text[start:end]
    left = piece.lstrip()
    if not left:
        return None
    start += len(piece) - len(left)
    return start, start + len(left.rstrip())


def _cut_spans(text: str, cut: re.Pattern[str]) -> list[Span]:
    spans: list[Span] = []
    previous = 0
    for match in cut.finditer(text):
        span = _trimmed(text, previous, match.end())
        if span is not None:
            spans.append(span)
        previous = match.end()
    span = _trimmed(text, previous, len(text))
    if span is not None:
        spans.append(span)
    return spans


def _clean_token_spans(text: str, offsets: Sequence[tuple[int, int]]) -> list[Span]:
    length = len(text)
    spans: list[Span] = []
    for raw_start, raw_end in offsets:
        start, end = max(0, int(raw_start)), min(length, int(raw_end))
        if start >= end:
            continue  # special tokens map to (0, 0)
        if text[start].isspace() or text[end - 1].isspace():  # byte-level BPE keeps the leading space
            span = _trimmed(text, start, end)
            if span is not None:
                spans.append(span)
        else:
            spans.append((start, end))
    spans.sort()
    return spans
