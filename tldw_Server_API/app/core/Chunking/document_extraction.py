"""Text of binary documents: PDF (text layer, page by page, with where each page starts), DOCX,
EPUB and ODT. Bytes in, `Extracted` out; raises `UnreadableDocument` (corrupt, encrypted, not
what its name says) or `NoExtractableText` (a scanned PDF, an empty document), never anything else.

Libraries (README, dependency notes): PDFium through pypdfium2 (Apache-2.0/BSD-3; 20x pypdf and
33x pdfminer.six on a 30-page PDF here), python-docx (MIT), and for EPUB and ODT the standard
library's zipfile with defusedxml (ebooklib is AGPL; odfpy is unmaintained). Zip members are
size-checked before anything is inflated. Synchronous and CPU-bound: run it off the event loop.
"""

from __future__ import annotations

import io
import posixpath
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tldw_Server_API.app.core.errors import InvalidInput, UnsupportedMediaType


class UnreadableDocument(UnsupportedMediaType):
    """Corrupt, encrypted, or not the format its name says (415)."""

    code = "unsupported_document"


class NoExtractableText(InvalidInput):
    """A readable document without text: a scanned PDF with no text layer, an empty file (400)."""

    code = "no_extractable_text"


@dataclass(frozen=True)
class Extracted:
    title: str                                   # "" when the document names none
    text: str
    page_starts: tuple[int, ...] | None = None   # where page i + 1 starts in `text` (PDF)


@dataclass(frozen=True)
class ExtractionLimits:
    max_pages: int = 5000                  # pages of one PDF
    max_unpacked_bytes: int = 256 * 2**20  # inflated size of a DOCX / EPUB / ODT's members, together


# PDFium is not thread-safe: one document operation at a time in this process.
_PDFIUM_LOCK = threading.Lock()


def extract_pdf(data: bytes, limits: ExtractionLimits) -> Extracted:
    import pypdfium2 as pdfium

    with _PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(data)
        except pdfium.PdfiumError as exc:
            reason = "it is encrypted" if "password" in str(exc).lower() else "it is not a valid PDF"
            raise UnreadableDocument(f"the PDF cannot be read: {reason}", param="file") from None
        try:
            if len(document) > limits.max_pages:
                raise UnreadableDocument(f"the PDF has {len(document)} pages; at most {limits.max_pages} are read "
                                         "(MEDIA_MAX_PAGES)", param="file")
            pages = [_page_text(document, i) for i in range(len(document))]
            title = str((document.get_metadata_dict() or {}).get("Title") or "")
        except pdfium.PdfiumError:
            raise UnreadableDocument("the PDF cannot be read: it is damaged", param="file") from None
        finally:
            document.close()
    text, starts = _join_pages(pages)
    if not text.strip():
        raise NoExtractableText("the PDF has no text layer (a scan or images only): run OCR on it first",
                                param="file")
    return Extracted(title.strip(), text, starts)


def _page_text(document: Any, index: int) -> str:
    page = document[index]
    textpage = page.get_textpage()
    try:
        raw = textpage.get_text_range()
    finally:
        textpage.close()
        page.close()
    return str(raw).replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()


def _join_pages(pages: list[str]) -> tuple[str, tuple[int, ...]]:
    """Pages joined by a blank line (a paragraph end for the chunker); where each one starts."""
    starts: list[int] = []
    parts: list[str] = []
    offset = 0
    for page in pages:
        if parts:
            parts.append("\n\n")
            offset += 2
        starts.append(offset)
        parts.append(page)
        offset += len(page)
    return "".join(parts), tuple(starts)


def _open_zip(data: bytes, kind: str, limits: ExtractionLimits) -> zipfile.ZipFile:
    """The archive, after checking its members' declared sizes (a zip bomb is refused unread)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise UnreadableDocument(f"the file is not a valid {kind}", param="file") from None
    if any(info.flag_bits & 0x1 for info in members):
        raise UnreadableDocument(f"the {kind} is encrypted", param="file")
    if sum(info.file_size for info in members) > limits.max_unpacked_bytes:
        raise UnreadableDocument(f"the {kind} unpacks to more than {limits.max_unpacked_bytes} bytes", param="file")
    return archive


def _read(archive: zipfile.ZipFile, name: str, kind: str) -> bytes:
    try:
        return archive.read(name)
    except (KeyError, zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise UnreadableDocument(f"the file is not a valid {kind} ('{name[:80]}' is missing or damaged)",
                                 param="file") from None


def _parse_xml(data: bytes, kind: str) -> Any:
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, fromstring

    try:
        return fromstring(data)
    except (ParseError, DefusedXmlException, ValueError):
        raise UnreadableDocument(f"the file is not a valid {kind} (bad XML)", param="file") from None


def extract_docx(data: bytes, limits: ExtractionLimits) -> Extracted:
    import docx
    from docx.table import Table

    archive = _open_zip(data, "DOCX", limits)
    archive.close()
    try:
        document = docx.Document(io.BytesIO(data))
        blocks: list[str] = []
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                blocks.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows)
            else:
                blocks.append(block.text)
        title = document.core_properties.title or ""
    except Exception as exc:  # noqa: BLE001 - python-docx raises many types on a damaged file
        if isinstance(exc, UnreadableDocument):
            raise
        raise UnreadableDocument("the file is not a valid DOCX", param="file") from None
    return _require_text(Extracted(title.strip(), _paragraphs(blocks)), "DOCX")


_ODF_TEXT = "urn:oasis:names:tc:opendocument:xmlns:text:1.0"
_ODF_OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"
_DC = "http://purl.org/dc/elements/1.1/"


def extract_odt(data: bytes, limits: ExtractionLimits) -> Extracted:
    with _open_zip(data, "ODT", limits) as archive:
        root = _parse_xml(_read(archive, "content.xml", "ODT"), "ODT")
        title = ""
        if "meta.xml" in archive.namelist():
            meta = _parse_xml(_read(archive, "meta.xml", "ODT"), "ODT")
            found = meta.find(f".//{{{_DC}}}title")
            title = (found.text or "") if found is not None else ""
    body = root.find(f"{{{_ODF_OFFICE}}}body")
    blocks = list(_odf_blocks(body)) if body is not None else []
    return _require_text(Extracted(title.strip(), _paragraphs(blocks)), "ODT")


def _odf_blocks(element: Any) -> Iterator[str]:
    """Text of each paragraph and heading, in document order (lists and tables nest them)."""
    for child in element:
        if child.tag in (f"{{{_ODF_TEXT}}}p", f"{{{_ODF_TEXT}}}h"):
            yield _odf_inline(child)
        else:
            yield from _odf_blocks(child)


def _odf_inline(element: Any) -> str:
    parts = [element.text or ""]
    for child in element:
        tag = child.tag
        if tag == f"{{{_ODF_TEXT}}}s":
            parts.append(" " * int(child.get(f"{{{_ODF_TEXT}}}c", "1") or 1))
        elif tag == f"{{{_ODF_TEXT}}}tab":
            parts.append("\t")
        elif tag == f"{{{_ODF_TEXT}}}line-break":
            parts.append("\n")
        elif tag != f"{{{_ODF_TEXT}}}note":   # footnotes would split a sentence in two
            parts.append(_odf_inline(child))
        parts.append(child.tail or "")
    return "".join(parts)


_CONTAINER = "urn:oasis:names:tc:opendocument:xmlns:container"
_OPF = "http://www.idpf.org/2007/opf"


def extract_epub(data: bytes, limits: ExtractionLimits, html_to_text: Callable[[str], tuple[str, str]]) -> Extracted:
    """The spine's documents in reading order, each through `html_to_text` ((title, text))."""
    with _open_zip(data, "EPUB", limits) as archive:
        container = _parse_xml(_read(archive, "META-INF/container.xml", "EPUB"), "EPUB")
        rootfile = container.find(f".//{{{_CONTAINER}}}rootfile")
        opf_path = rootfile.get("full-path", "") if rootfile is not None else ""
        package = _parse_xml(_read(archive, opf_path, "EPUB"), "EPUB")
        manifest = {item.get("id"): item for item in package.iter(f"{{{_OPF}}}item")}
        base = posixpath.dirname(opf_path)
        chapters: list[str] = []
        for ref in package.iter(f"{{{_OPF}}}itemref"):
            item = manifest.get(ref.get("idref"))
            if item is None or "html" not in (item.get("media-type") or ""):
                continue
            name = posixpath.normpath(posixpath.join(base, item.get("href", "")))
            chapters.append(html_to_text(_read(archive, name, "EPUB").decode("utf-8", "replace"))[1])
    found = package.find(f".//{{{_DC}}}title")
    title = (found.text or "") if found is not None else ""
    return _require_text(Extracted(title.strip(), "\n\n".join(c for c in chapters if c.strip())), "EPUB")


def _paragraphs(blocks: list[str]) -> str:
    return "\n\n".join(b.strip() for b in blocks if b.strip())


def _require_text(extracted: Extracted, kind: str) -> Extracted:
    if not extracted.text.strip():
        raise NoExtractableText(f"the {kind} contains no text", param="file")
    return extracted
