"""Document extraction on real files (tests/fixtures/documents, made by LibreOffice from sample.html:
three sections, each on its own page): PDF text per page with page starts, DOCX, EPUB and ODT in
reading order; corrupt, encrypted, image-only, bomb-sized and mislabelled files are refused with the
document errors, never anything else; HTML keeps the main text and drops page furniture."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from support import encrypted_pdf, image_only_pdf

from tldw_Server_API.app.core.Chunking import (
    ChunkingOptions,
    ExtractionLimits,
    NoExtractableText,
    UnreadableDocument,
    assign_pages,
    chunk_text,
    extract_text,
    html_to_text,
)

DOCS = Path(__file__).resolve().parents[3] / "fixtures" / "documents"
SECTIONS = ["Lighthouse Keeping", "Volcanic Soil Chemistry", "Medieval Bookbinding"]
LAST_SENTENCES = [
    "Logbooks from the station record fog signals, passing steamers, and the price of lamp oil in 1887.",
    "Vineyards on the slopes of Etna owe their mineral wines to these young, porous soils.",
    "A chained library fixed each volume to its lectern so that no reader could carry it away.",
]


def fixture(name: str) -> bytes:
    return (DOCS / name).read_bytes()


def test_pdf_text_layer_page_by_page_with_page_starts() -> None:
    found = extract_text("sample.pdf", "application/pdf", fixture("sample.pdf"))
    assert found.page_starts is not None and len(found.page_starts) == 3 and found.page_starts[0] == 0
    for page, (heading, last) in enumerate(zip(SECTIONS, LAST_SENTENCES, strict=True)):
        start = found.page_starts[page]
        end = found.page_starts[page + 1] if page < 2 else len(found.text)
        page_text = found.text[start:end]
        assert page_text.startswith(heading) and last in " ".join(page_text.split())
    assert found.title == "Field Notes on Three Crafts"


def test_pages_are_assigned_to_chunks_by_where_they_start() -> None:
    found = extract_text("sample.pdf", None, fixture("sample.pdf"))
    chunks = assign_pages(chunk_text(found.text, ChunkingOptions("sentences", 1, 0)), found.page_starts)
    page_of = {heading: next(c.page for c in chunks if heading in c.text) for heading in SECTIONS}
    assert page_of == {"Lighthouse Keeping": 1, "Volcanic Soil Chemistry": 2, "Medieval Bookbinding": 3}
    assert [c.page for c in chunks] == sorted(c.page for c in chunks)   # type: ignore[type-var]


@pytest.mark.parametrize("name", ["sample.docx", "sample.epub", "sample.odt"])
def test_docx_epub_odt_give_every_section_in_reading_order(name: str) -> None:
    found = extract_text(name, None, fixture(name))
    flat = " ".join(found.text.split())
    positions = [flat.index(text) for text in [*SECTIONS, *LAST_SENTENCES]]
    assert positions[:3] == sorted(positions[:3])
    assert all(flat.index(s) < flat.index(last) for s, last in zip(SECTIONS, LAST_SENTENCES, strict=True))
    assert found.page_starts is None
    assert "\n\n" in found.text   # paragraphs stay paragraphs for the chunker


def test_epub_title_comes_from_its_package() -> None:
    assert extract_text("book.epub", None, fixture("sample.epub")).title == "Field Notes on Three Crafts"


def test_an_encrypted_pdf_is_unreadable_and_says_so() -> None:
    with pytest.raises(UnreadableDocument, match="encrypted") as caught:
        extract_text("secret.pdf", None, encrypted_pdf(fixture("sample.pdf")))
    assert caught.value.code == "unsupported_document" and caught.value.param == "file"


def test_a_pdf_without_a_text_layer_has_no_extractable_text() -> None:
    with pytest.raises(NoExtractableText) as caught:
        extract_text("scan.pdf", None, image_only_pdf())
    assert caught.value.code == "no_extractable_text" and "OCR" in caught.value.message


@pytest.mark.parametrize("name", ["sample.pdf", "sample.docx", "sample.epub", "sample.odt"])
def test_truncated_and_garbage_files_are_unreadable(name: str) -> None:
    data = fixture(name)
    for broken in (data[: len(data) // 3], b"\x00garbage" * 50, data[:40]):
        with pytest.raises(UnreadableDocument):
            extract_text(name, None, broken)


def test_a_pdf_over_the_page_limit_is_refused() -> None:
    with pytest.raises(UnreadableDocument, match="3 pages"):
        extract_text("sample.pdf", None, fixture("sample.pdf"), ExtractionLimits(max_pages=2))


def zipped(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize("name", ["bomb.docx", "bomb.epub", "bomb.odt"])
def test_a_zip_that_inflates_past_the_limit_is_refused_unread(name: str) -> None:
    bomb = zipped({"content.xml": b"\0" * (4 * 2**20)})   # 4 MiB of zeros deflate to a few KB
    assert len(bomb) < 20_000
    with pytest.raises(UnreadableDocument, match="unpacks to more than"):
        extract_text(name, None, bomb, ExtractionLimits(max_unpacked_bytes=2**20))


def test_xml_entity_expansion_is_refused() -> None:
    laughs = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
              b'<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0">'
              b"&b;</office:document-content>")
    with pytest.raises(UnreadableDocument):
        extract_text("laughs.odt", None, zipped({"content.xml": laughs}))


def test_an_epub_without_its_container_is_unreadable() -> None:
    with pytest.raises(UnreadableDocument, match="META-INF/container.xml"):
        extract_text("book.epub", None, zipped({"mimetype": b"application/epub+zip"}))


def test_an_empty_docx_has_no_extractable_text() -> None:
    import docx

    out = io.BytesIO()
    docx.Document().save(out)
    with pytest.raises(NoExtractableText):
        extract_text("empty.docx", None, out.getvalue())


def test_html_keeps_the_main_text_and_drops_page_furniture() -> None:
    page = """<html><head><title>T</title></head><body>
      <header><a href="/">Site</a> <nav><a href="/a">Home</a><a href="/b">Blog</a></nav></header>
      <div role="navigation"><div><a>Prev</a></div><div><a>Next</a></div></div>
      <main><article><header><h1>The real title</h1></header><p>The body text that matters.</p>
        <div hidden>secret</div><aside>Related posts</aside><p>Second paragraph.</p></article></main>
      <footer>Copyright 2026</footer><form><button>Subscribe</button></form></body></html>"""
    assert html_to_text(page) == "The real title\n\nThe body text that matters.\n\nSecond paragraph."


def test_html_without_a_main_element_drops_only_the_furniture() -> None:
    page = ("<body><nav>Menu</nav><div role='banner'>Logo</div><div><p>Text one.</p><div><p>Text two.</p></div>"
            "</div><footer>Legal</footer></body>")
    assert html_to_text(page) == "Text one.\n\nText two."
