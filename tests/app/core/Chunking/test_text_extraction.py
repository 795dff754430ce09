"""Text extraction of uploads: kind by extension or content type, UTF-8 (BOM, invalid bytes), empty and
binary content, titles, and HTML to readable text (dropped elements, blocks, entities, whitespace)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tldw_Server_API.app.core.Chunking.document_extraction import Extracted
from tldw_Server_API.app.core.Chunking.text_extraction import detect_kind, extract_text, html_to_text
from tldw_Server_API.app.core.errors import InvalidInput, UnsupportedMediaType


def test_plain_text_with_bom_and_crlf() -> None:
    raw = "\ufeffLine one\r\nLine two\rthree 東京 👍🏽\n".encode()
    expected = Extracted("notes", "Line one\nLine two\nthree 東京 👍🏽\n")
    assert extract_text("notes.txt", "application/octet-stream", raw) == expected


def test_markdown_is_kept_as_is() -> None:
    raw = b"# Title\n\n- item *one*\n- [link](http://x)\n"
    assert extract_text("README.markdown", None, raw) == Extracted("README", raw.decode())
    assert extract_text("doc.md", None, raw).text == raw.decode()


@pytest.mark.parametrize(
    ("filename", "content_type", "kind"),
    [
        ("a.txt", None, "text"), ("a.TXT", "text/html", "text"), ("a.md", None, "markdown"),
        ("a.Markdown", None, "markdown"), ("a.html", None, "html"), ("a.HTM", None, "html"),
        ("noext", "text/plain", "text"), (None, "text/markdown; charset=utf-8", "markdown"),
        ("", "text/x-markdown", "markdown"), ("upload", "TEXT/HTML; charset=UTF-8", "html"),
        (None, "application/xhtml+xml", "html"), ("C:\\docs\\page.htm", None, "html"),
    ],
)
def test_kind_by_extension_then_content_type(filename: str | None, content_type: str | None, kind: str) -> None:
    assert detect_kind(filename, content_type) == kind


@pytest.mark.parametrize(
    ("filename", "content_type"),
    [("a.doc", None), ("a.rtf", "text/plain"), ("a.pptx", "text/markdown"), ("noext", "application/octet-stream"),
     (None, None), ("noext", "application/msword"), ("archive.tar.gz", None)],
)
def test_unsupported_types_are_refused(filename: str | None, content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        extract_text(filename, content_type, b"some bytes")
    assert caught.value.param == "file"


@pytest.mark.parametrize(
    "raw", [b"", b"   \n\t  ", "\ufeff \u3000\n".encode(), b"\xff\xfe\x00bad", b"ok then \xc3\x28", b"bin\x00ary"]
)
def test_empty_invalid_or_binary_content_is_invalid_input(raw: bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        extract_text("file.txt", "text/plain", raw)
    assert caught.value.param == "file"


def test_html_with_only_invisible_content_is_empty() -> None:
    with pytest.raises(InvalidInput):
        extract_text("x.html", None, b"<html><head><title>T</title></head><script>var a = 1;</script></html>")


def test_declared_charset_is_honoured_and_unknown_refused() -> None:
    assert extract_text("a.txt", "text/plain; charset=ISO-8859-1", "café".encode("latin-1")).text == "café"
    assert extract_text("a.txt", 'text/plain; charset="utf-8"', "\ufeffcafé".encode()).text == "café"
    with pytest.raises(InvalidInput):
        extract_text("a.txt", "text/plain; charset=klingon", b"abc")


def test_titles() -> None:
    page = b"<html><head><title>  My\n  Page &amp; Co </title></head><body><p>Body</p></body></html>"
    assert extract_text("page.html", None, page) == Extracted("My Page & Co", "Body")
    assert extract_text("page.html", None, b"<p>No title</p>") == Extracted("page", "No title")
    assert extract_text("dir/sub/report.v2.txt", None, b"x") == Extracted("report.v2", "x")
    assert extract_text(None, "text/plain", b"x") == Extracted("Untitled", "x")


def test_html_to_text_structure() -> None:
    html = """<!DOCTYPE html><html><head><title>T</title><style>p { color: red }</style>
    <script>document.write("<p>hidden</p>")</script></head>
    <body><h1>Heading</h1><p>First   para&nbsp;with <b>bold</b> and
    an&nbsp;entity &lt;tag&gt; &#x1F44D;</p><p>Second<br>line two</p>
    <ul><li>one</li><li>two</li></ul><table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>
    <pre>  keep   this
      indentation</pre><noscript>enable js</noscript><div>tail <span>inline</span></div>
    <template><p>never</p></template><svg><title>icon</title><text>svg text</text></svg></body></html>"""
    assert html_to_text(html) == (
        "Heading\n\nFirst para with bold and an entity <tag> 👍\n\nSecond\nline two\n\none\ntwo\n\n"
        "a b\nc d\n\n  keep   this\n      indentation\n\ntail inline"
    )


def test_html_missing_head_end_and_malformed_markup() -> None:
    assert html_to_text("<head><title>x</title><body><p>visible</p>") == "visible"
    assert html_to_text("<p>unclosed <b>bold <i>italic</p><div>next") == "unclosed bold italic\n\nnext"
    assert html_to_text("plain &amp; simple &unknown; < not a tag") == "plain & simple &unknown; < not a tag"
    assert html_to_text("") == ""


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="<&")))
def test_html_without_markup_is_whitespace_collapsed_text(text: str) -> None:
    assert html_to_text(text) == " ".join(text.split())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["<p>", "</p>", "<br/>", "<script>", "</script>", "<pre>", "&amp;",
                                           "<!--", "-->", "<![CDATA[", "<head>", "<body>", "<", "&"]),
                          st.text(max_size=5)), max_size=30).map("".join))
def test_html_to_text_never_raises_and_never_leaves_triple_newlines(html: str) -> None:
    text = html_to_text(html)
    assert text == text.strip()
    if "<pre>" not in html:
        assert "\n\n\n" not in text
