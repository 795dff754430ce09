"""Text extraction of uploaded media: plain text, Markdown (kept as-is), HTML (to plain text with the
standard library's `html.parser`, navigation and page furniture removed), and the binary documents
of `document_extraction.py` (PDF with page starts, DOCX, EPUB, ODT). Pure: bytes in, `Extracted`
out. Raises InvalidInput / UnsupportedMediaType (and their document subclasses), never HTTP
errors; does no I/O. CPU-bound on large documents: callers run it off the event loop.
"""

from __future__ import annotations

import codecs
import re
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import Literal

from tldw_Server_API.app.core.Chunking.document_extraction import (
    Extracted,
    ExtractionLimits,
    extract_docx,
    extract_epub,
    extract_odt,
    extract_pdf,
)
from tldw_Server_API.app.core.errors import InvalidInput, UnsupportedMediaType

TextKind = Literal["text", "markdown", "html", "pdf", "docx", "epub", "odt"]

EXTENSION_KINDS: dict[str, TextKind] = {
    ".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html",
    ".xhtml": "html", ".pdf": "pdf", ".docx": "docx", ".epub": "epub", ".odt": "odt",
}
CONTENT_TYPE_KINDS: dict[str, TextKind] = {
    "text/plain": "text", "text/markdown": "markdown", "text/x-markdown": "markdown",
    "text/html": "html", "application/xhtml+xml": "html", "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/epub+zip": "epub", "application/vnd.oasis.opendocument.text": "odt",
}
_BINARY_KINDS = ("pdf", "docx", "epub", "odt")

# Elements whose content is not text a reader sees, and page furniture around the text (navigation,
# sidebars, forms); a page header or footer is furniture unless it is inside the main text.
_SKIPPED = frozenset({"script", "style", "head", "template", "noscript", "svg", "math", "iframe", "object",
                      "nav", "aside", "form", "button", "select", "dialog"})
_FURNITURE_OUTSIDE_MAIN = frozenset({"header", "footer"})
_FURNITURE_ROLES = frozenset({"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar"})
_MAIN_TAGS = frozenset({"main", "article"})
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                   "wbr"})
# Elements that start a paragraph (blank line) or a line; table cells are separated by a space.
_PARAGRAPH_TAGS = frozenset({
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol", "dl", "section",
    "article", "header", "footer", "nav", "aside", "main", "figure", "hr", "form", "fieldset", "address", "details",
})
_LINE_TAGS = frozenset({"br", "li", "tr", "div", "dt", "dd", "figcaption", "caption", "summary", "option", "body"})
_CELL_TAGS = frozenset({"td", "th"})
_SPACES = re.compile(r"\s+")

Piece = tuple[str, str | int]  # ("text" | "pre", text) or ("break", newline count)


class _TextCollector(HTMLParser):
    """Collects text pieces; `in_main` marks those inside <main>/<article>/role=main, so a page that
    has a main text keeps only it. Skipped subtrees are tracked with the stack of their open tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[tuple[Piece, bool]] = []
        self.title_parts: list[str] = []
        self._skipping: list[str] = []
        self._main: list[str] = []
        self._pre_depth = 0
        self._in_title = False

    def _skip_root(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        values = dict(attrs)
        if tag in _SKIPPED or "hidden" in values or values.get("aria-hidden") == "true":
            return True
        if tag in _FURNITURE_OUTSIDE_MAIN and not self._main:
            return True
        return (values.get("role") or "").strip().lower() in _FURNITURE_ROLES

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._skipping.clear()  # a missing </head> must not hide the whole document
        if tag == "title" and "svg" not in self._skipping:
            self._in_title = True   # <title> is in the skipped <head>
        if self._skipping:
            if tag not in _VOID:
                self._skipping.append(tag)
            return
        if tag not in _VOID and self._skip_root(tag, attrs):
            self._skipping.append(tag)
            return
        if tag in _MAIN_TAGS or dict(attrs).get("role") == "main":
            self._main.append(tag)
        elif tag in self._main:
            self._main.append(tag)   # nested element of the same name: its end must not close main
        if tag == "pre":
            self._pre_depth += 1
        self._mark_break(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        if self._skipping:
            if tag in self._skipping:
                while self._skipping and self._skipping.pop() != tag:
                    pass
            return
        if tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
        if tag in self._main:
            while self._main and self._main.pop() != tag:
                pass
        self._mark_break(tag)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title_parts.append(data)
            return
        if self._skipping:
            return
        if self._pre_depth:
            self._add(("pre", data))
        else:
            self._add(("text", _SPACES.sub(" ", data)))

    def _add(self, piece: Piece) -> None:
        self.pieces.append((piece, bool(self._main)))

    def _mark_break(self, tag: str) -> None:
        if tag in _PARAGRAPH_TAGS:
            self._add(("break", 2))
        elif tag in _LINE_TAGS:
            self._add(("break", 1))
        elif tag in _CELL_TAGS:
            self._add(("text", " "))


def _assemble(pieces: list[Piece]) -> str:
    """Join text pieces; breaks become at most one blank line; spaces next to breaks are dropped."""
    out: list[str] = []
    pending = 0
    for kind, value in pieces:
        if isinstance(value, int):
            pending = max(pending, value)
            continue
        if kind == "text" and (pending or not out or out[-1].endswith((" ", "\n"))):
            value = value.lstrip(" ")
        if not value:
            continue
        if pending and out:
            out[-1] = out[-1].rstrip(" ")
            out.append("\n" * pending)
        pending = 0
        out.append(value)
    return "".join(out).strip()


def html_to_text(html: str) -> str:
    """Readable text of an HTML document: no script/style/head, block elements on their own lines,
    paragraphs separated by one blank line, entities unescaped, runs of whitespace collapsed
    (except inside <pre>)."""
    return _parse_html(html)[1]


def _parse_html(html: str) -> tuple[str, str]:
    """(title, text); when the page marks a main text (<main>, <article>, role=main) only it is kept."""
    collector = _TextCollector()
    collector.feed(html)
    collector.close()
    title = _SPACES.sub(" ", "".join(collector.title_parts)).strip()
    main = [piece for piece, in_main in collector.pieces if in_main]
    if not _assemble(main):
        main = [piece for piece, _ in collector.pieces]
    return title, _assemble(main)


def detect_kind(filename: str | None, content_type: str | None) -> TextKind:
    """The kind of an upload: by extension when the name has one, else by content type.
    A name with an unsupported extension is refused whatever its content type says."""
    suffix = PurePosixPath(_base_name(filename)).suffix.lower()
    if suffix:
        if suffix in EXTENSION_KINDS:
            return EXTENSION_KINDS[suffix]
        raise UnsupportedMediaType(
            f"unsupported file type '{suffix[:20]}'; supported: {', '.join(EXTENSION_KINDS)}", param="file"
        )
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type in CONTENT_TYPE_KINDS:
        return CONTENT_TYPE_KINDS[media_type]
    raise UnsupportedMediaType(
        f"unsupported content type; supported: {', '.join(CONTENT_TYPE_KINDS)}", param="file"
    )


def extract_text(filename: str | None, content_type: str | None, raw_bytes: bytes,
                 limits: ExtractionLimits | None = None) -> Extracted:
    """Title, text and (PDF) page starts of an upload. Text files: UTF-8 (a BOM is dropped) or the
    charset the content type declares; newlines become "\\n"; HTML becomes plain text and its
    <title> the title. Documents: their text and their own title. The title falls back to the file
    name without extension ("Untitled" without one)."""
    kind = detect_kind(filename, content_type)
    if not raw_bytes:
        raise InvalidInput("the file is empty", param="file")
    fallback = PurePosixPath(_base_name(filename)).stem.strip() or "Untitled"
    if kind in _BINARY_KINDS:
        found = _extract_document(kind, raw_bytes, limits or ExtractionLimits())
        return Extracted(found.title or fallback, found.text, found.page_starts)
    text = _decode(raw_bytes, content_type)
    if "\x00" in text:
        raise InvalidInput("the file contains NUL characters; it does not look like text", param="file")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    title = ""
    if kind == "html":
        title, text = _parse_html(text)
    if not text.strip():
        raise InvalidInput("the file contains no text", param="file")
    return Extracted(title or fallback, text)


def _extract_document(kind: str, raw_bytes: bytes, limits: ExtractionLimits) -> Extracted:
    if kind == "pdf":
        return extract_pdf(raw_bytes, limits)
    if kind == "docx":
        return extract_docx(raw_bytes, limits)
    if kind == "epub":
        return extract_epub(raw_bytes, limits, _parse_html)
    return extract_odt(raw_bytes, limits)


def _base_name(filename: str | None) -> str:
    return (filename or "").replace("\\", "/").rsplit("/", 1)[-1]


def _decode(raw_bytes: bytes, content_type: str | None) -> str:
    charset = "utf-8"
    for param in (content_type or "").split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip("\"'").lower()
    try:
        codec = codecs.lookup(charset).name
    except LookupError:
        raise InvalidInput("unknown charset in the content type", param="file") from None
    try:
        return raw_bytes.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError:
        raise InvalidInput(f"the file is not valid {codec} text", param="file") from None
