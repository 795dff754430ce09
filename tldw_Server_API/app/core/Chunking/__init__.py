"""Host chunking (words, sentences, paragraphs, tokens; size + overlap; char offsets) and text
extraction of uploads (txt, Markdown, HTML). Pure functions; see chunker.py and text_extraction.py."""

from tldw_Server_API.app.core.Chunking.chunker import (
    CHUNK_METHODS,
    Chunk,
    ChunkingOptions,
    HFOffsetsTokenizer,
    OffsetsTokenizer,
    RegexTokenizer,
    chunk_text,
    validate_options,
)
from tldw_Server_API.app.core.Chunking.text_extraction import extract_text, html_to_text

__all__ = [
    "CHUNK_METHODS",
    "Chunk",
    "ChunkingOptions",
    "HFOffsetsTokenizer",
    "OffsetsTokenizer",
    "RegexTokenizer",
    "chunk_text",
    "extract_text",
    "html_to_text",
    "validate_options",
]
