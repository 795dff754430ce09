"""Host chunking (words, sentences, paragraphs, tokens; size + overlap; char offsets) and text
extraction of uploads (txt, Markdown, HTML, PDF, DOCX, EPUB, ODT). Pure functions; see chunker.py,
packing.py and text_extraction.py."""

from tldw_Server_API.app.core.Chunking.chunker import (
    CHUNK_METHODS,
    Chunk,
    ChunkingOptions,
    CountingTokenizer,
    HFOffsetsTokenizer,
    OffsetsTokenizer,
    RegexTokenizer,
    ThreadLocalHFTokenizer,
    assign_pages,
    chunk_document,
    chunk_text,
    validate_options,
)
from tldw_Server_API.app.core.Chunking.document_extraction import (
    Extracted,
    ExtractionLimits,
    NoExtractableText,
    UnreadableDocument,
)
from tldw_Server_API.app.core.Chunking.text_extraction import detect_kind, extract_text, html_to_text

__all__ = [
    "CHUNK_METHODS",
    "Chunk",
    "ChunkingOptions",
    "CountingTokenizer",
    "Extracted",
    "ExtractionLimits",
    "HFOffsetsTokenizer",
    "NoExtractableText",
    "OffsetsTokenizer",
    "RegexTokenizer",
    "ThreadLocalHFTokenizer",
    "UnreadableDocument",
    "assign_pages",
    "chunk_document",
    "chunk_text",
    "detect_kind",
    "extract_text",
    "html_to_text",
    "validate_options",
]
