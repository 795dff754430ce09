"""The chunker: property tests over random unicode (chunks are trimmed slices of the original that
cover every non-space character; sizes and overlaps in units, exactly), examples per method, the
token method with a stand-in tokenizer and the bundled model's fast tokenizer, option validation."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tldw_Server_API.app.core.Chunking import (
    Chunk,
    ChunkingOptions,
    HFOffsetsTokenizer,
    RegexTokenizer,
    chunk_text,
    validate_options,
)
from tldw_Server_API.app.core.config import ChunkingDefaults
from tldw_Server_API.app.core.errors import InvalidInput

SPECIALS = [" ", "  ", "\n", "\n\n", "\r\n", "\t", "\u3000", "\xa0", "\u2029", ".", "!", "?", "。", "\"",
            "\u201d", "東", "京", "の", "👍🏽", "👨\u200d👩\u200d👧", "e\u0301", "\u0301", "a", "Z", "9"]
texts = st.lists(st.one_of(st.sampled_from(SPECIALS), st.characters()), max_size=120).map("".join)
sizes = st.integers(min_value=1, max_value=8).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1)))
methods = st.sampled_from(["words", "sentences", "paragraphs", "tokens"])


class CharTokenizer:
    """Every character is a token (whitespace included), with a special token at (0, 0) first."""

    def encode_offsets(self, text: str) -> list[tuple[int, int]]:
        return [(0, 0)] + [(i, i + 1) for i in range(len(text))]


def assert_well_formed(text: str, chunks: list[Chunk]) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    covered: set[int] = set()
    for chunk in chunks:
        assert 0 <= chunk.start_char < chunk.end_char <= len(text)
        assert chunk.text == text[chunk.start_char:chunk.end_char]
        assert chunk.text.strip() == chunk.text != ""
        covered.update(range(chunk.start_char, chunk.end_char))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())
    assert [c.start_char for c in chunks] == sorted(c.start_char for c in chunks)


def assert_windows(units_per_chunk: list[list[str]], all_units: list[str], size: int, overlap: int) -> None:
    """Full windows of `size` units except the last; neighbours share exactly `overlap` units."""
    rebuilt: list[str] = []
    for k, units in enumerate(units_per_chunk):
        assert 1 <= len(units) <= size
        if k < len(units_per_chunk) - 1:
            assert len(units) == size
        if k:
            assert units[:overlap] == units_per_chunk[k - 1][size - overlap:]
        rebuilt.extend(units if k == 0 else units[overlap:])
    assert rebuilt == all_units


@settings(max_examples=300, deadline=None)
@given(texts, sizes, methods)
def test_chunks_are_trimmed_slices_covering_all_content(text: str, size: tuple[int, int], method: str) -> None:
    chunks = chunk_text(text, ChunkingOptions(method, *size))
    assert_well_formed(text, chunks)
    assert (chunks == []) == (text.strip() == "")


SPACELESS = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # one word per character
latin_words = st.text(st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1).filter(
    lambda word: not SPACELESS.search(word)
)
gaps = st.lists(st.sampled_from([" ", "\n", "\t", "\u3000", "\r\n", "  \n\n "]), min_size=1, max_size=3).map("".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(latin_words, gaps), max_size=40), sizes)
def test_words_windows_are_exact(pairs: list[tuple[str, str]], size: tuple[int, int]) -> None:
    text = "".join(word + gap for word, gap in pairs)
    words = text.split()
    chunks = chunk_text(text, ChunkingOptions("words", *size))
    assert_well_formed(text, chunks)
    assert_windows([c.text.split() for c in chunks], words, *size)


paragraph_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\u2029"), min_size=1)


@settings(max_examples=150, deadline=None)
@given(st.lists(paragraph_text.filter(str.strip), max_size=15), sizes, st.sampled_from(["\n\n", "\n \n", "\r\n\r\n"]))
def test_paragraph_windows_are_exact(paragraphs: list[str], size: tuple[int, int], sep: str) -> None:
    text = sep.join(paragraphs)
    chunks = chunk_text(text, ChunkingOptions("paragraphs", *size))
    assert_well_formed(text, chunks)
    per_chunk = [[p.strip() for p in re.split(r"\n\s*\n", c.text)] for c in chunks]
    assert_windows(per_chunk, [p.strip() for p in paragraphs], *size)


@settings(max_examples=300, deadline=None)
@given(texts, sizes)
def test_token_chunks_fit_their_budget_and_share_at_most_the_overlap(text: str, size: tuple[int, int]) -> None:
    budget, overlap = size
    chunks = chunk_text(text, ChunkingOptions("tokens", budget, overlap), tokenizer=CharTokenizer())
    assert_well_formed(text, chunks)
    for chunk in chunks:   # CharTokenizer: a token per non-space character
        assert 1 <= sum(not ch.isspace() for ch in chunk.text) <= budget
    for before, after in zip(chunks, chunks[1:], strict=False):
        shared = text[after.start_char:before.end_char] if after.start_char < before.end_char else ""
        assert sum(not ch.isspace() for ch in shared) <= overlap
        assert after.start_char > before.start_char


def test_tokens_pack_whole_sentences_and_share_whole_sentences() -> None:
    text = "One two three. Four five six. Seven eight nine. Ten eleven twelve."
    chunks = chunk_text(text, ChunkingOptions("tokens", 9, 4), tokenizer=RegexTokenizer())
    assert texts_of(chunks) == ["One two three. Four five six.", "Four five six. Seven eight nine.",
                                "Seven eight nine. Ten eleven twelve."]
    chunks = chunk_text(text, ChunkingOptions("tokens", 9, 0), tokenizer=RegexTokenizer())
    assert texts_of(chunks) == ["One two three. Four five six.", "Seven eight nine. Ten eleven twelve."]


def test_tokens_prefer_a_paragraph_end_in_the_last_quarter() -> None:
    text = "a b c d e f g. h i.\n\nj k. l m n o p q r s t."
    chunks = chunk_text(text, ChunkingOptions("tokens", 14, 0), tokenizer=RegexTokenizer())
    # "a..g." (8) + "h i." (3) = 11 tokens >= 3/4 of 14, then a paragraph starts: cut there, not after "j k."
    assert texts_of(chunks) == ["a b c d e f g. h i.", "j k. l m n o p q r s t."]


def test_tokens_cut_a_sentence_longer_than_the_budget_at_token_boundaries() -> None:
    text = "Short one. " + " ".join(f"w{i}" for i in range(25)) + ". Tail."
    chunks = chunk_text(text, ChunkingOptions("tokens", 10, 0), tokenizer=RegexTokenizer())
    assert_well_formed(text, chunks)
    assert [len(RegexTokenizer().encode_offsets(c.text)) for c in chunks] == [3, 10, 10, 8]


def texts_of(chunks: list[Chunk]) -> list[str]:
    return [c.text for c in chunks]


def test_words_example_with_overlap_and_short_last_chunk() -> None:
    text = "  alpha beta\tgamma\n\ndelta epsilon  "
    assert texts_of(chunk_text(text, ChunkingOptions("words", 2, 1))) == [
        "alpha beta", "beta\tgamma", "gamma\n\ndelta", "delta epsilon"]
    chunks = chunk_text(text, ChunkingOptions("words", 2, 0))
    assert texts_of(chunks) == ["alpha beta", "gamma\n\ndelta", "epsilon"]
    assert (chunks[0].start_char, chunks[0].end_char) == (2, 12)


def test_empty_and_whitespace_give_no_chunks() -> None:
    for text in ["", " ", "\n\n\t \u3000\xa0"]:
        for method in ["words", "sentences", "paragraphs", "tokens"]:
            assert chunk_text(text, ChunkingOptions(method, 3, 1)) == []


def test_words_keep_graphemes_and_split_han_and_kana_per_character() -> None:
    text = "cafe\u0301 👨\u200d👩\u200d👧 東京は"
    assert texts_of(chunk_text(text, ChunkingOptions("words", 1, 0))) == [
        "cafe\u0301", "👨\u200d👩\u200d👧", "東", "京", "は"]
    assert texts_of(chunk_text("한국어 문장", ChunkingOptions("words", 1, 0))) == ["한국어", "문장"]


def test_sentences_example() -> None:
    text = 'He said "Hi." Then left! Pi is 3.14 exactly? Yes.\n\nNo stop here\n\n東京は大きい。次の文。'
    assert texts_of(chunk_text(text, ChunkingOptions("sentences", 1, 0))) == [
        'He said "Hi."', "Then left!", "Pi is 3.14 exactly?", "Yes.", "No stop here", "東京は大きい。", "次の文。"]
    assert texts_of(chunk_text("A b. C d. E f.", ChunkingOptions("sentences", 2, 1))) == ["A b. C d.", "C d. E f."]


def test_sentences_do_not_end_at_a_single_newline() -> None:
    text = "a line wrapped\nin the middle. Next."
    assert texts_of(chunk_text(text, ChunkingOptions("sentences", 1, 0))) == ["a line wrapped\nin the middle.", "Next."]


def test_paragraphs_example_keeps_long_paragraphs_whole() -> None:
    long_paragraph = " ".join(["word"] * 5000)
    text = f"first line\nsecond line\n \t\n{long_paragraph}\r\n\r\nlast\u2029after separator"
    chunks = chunk_text(text, ChunkingOptions("paragraphs", 1, 0))
    assert texts_of(chunks) == ["first line\nsecond line", long_paragraph, "last", "after separator"]


class SpaceyTokenizer:
    """Byte-level-BPE-like offsets: leading spaces included, a special token, a duplicated span."""

    def encode_offsets(self, text: str) -> list[tuple[int, int]]:
        spans = [m.span() for m in re.finditer(r"\s*\S+", text)]
        return [(0, 0), *spans[:1], *spans, (len(text), len(text) + 5)]


def test_tokens_clean_spaces_special_tokens_and_bad_offsets() -> None:
    chunks = chunk_text("  one two three", ChunkingOptions("tokens", 2, 0), tokenizer=SpaceyTokenizer())
    assert texts_of(chunks) == ["one", "two three"]  # "one" is duplicated by the tokenizer: two units


def test_default_tokenizer_is_the_regex_approximation() -> None:
    spans = RegexTokenizer().encode_offsets("Hello, 東京 wörld_x 12")
    assert spans == [(0, 5), (5, 6), (7, 8), (8, 9), (10, 17), (18, 20)]
    assert texts_of(chunk_text("Hello, world!", ChunkingOptions("tokens", 2, 1))) == ["Hello,", "world!"]


def test_hf_fast_tokenizer_offsets(bundled_model_path: Path) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(bundled_model_path))
    text = "Chunking with a real WordPiece tokenizer: naïve café, 東京, emoji 👍🏽 and more words. " * 20
    chunks = chunk_text(text, ChunkingOptions("tokens", 16, 4), tokenizer=HFOffsetsTokenizer(hf))
    assert_well_formed(text, chunks)
    counts = [len(hf(c.text, add_special_tokens=False)["input_ids"]) for c in chunks]
    assert max(counts) == 16 and all(n <= 16 for n in counts)
    total = len(hf(text, add_special_tokens=False)["input_ids"])
    assert total <= sum(counts) <= total + 4 * (len(chunks) - 1)  # every token, plus at most the overlaps
    assert HFOffsetsTokenizer(hf).count([c.text for c in chunks]) == counts
    with pytest.raises(ValueError):
        HFOffsetsTokenizer(object())


@pytest.mark.parametrize(
    ("options", "max_allowed", "param"),
    [
        (ChunkingOptions("letters", 10, 0), None, "method"),
        (ChunkingOptions("words", 0, 0), None, "chunk_size"),
        (ChunkingOptions("words", -5, 0), None, "chunk_size"),
        (ChunkingOptions("words", 10001, 0), 10000, "chunk_size"),
        (ChunkingOptions("words", True, 0), None, "chunk_size"),  # type: ignore[arg-type]
        (ChunkingOptions("words", 10, -1), None, "overlap"),
        (ChunkingOptions("words", 10, 10), None, "overlap"),
        (ChunkingOptions("words", 10, 11), None, "overlap"),
    ],
)
def test_invalid_options_name_the_field(options: ChunkingOptions, max_allowed: int | None, param: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_options(options, max_allowed)
    assert caught.value.param == param
    if max_allowed is None:
        with pytest.raises(InvalidInput):
            chunk_text("some text", options)


def test_valid_options_and_defaults() -> None:
    validate_options(ChunkingOptions("words", 10000, 9999), 10000)
    defaults = ChunkingDefaults(method="sentences", max_size=7, overlap=2, max_allowed_size=100)
    assert ChunkingOptions.from_defaults(defaults) == ChunkingOptions("sentences", 7, 2)
    assert ChunkingOptions() == ChunkingOptions("words", 1000, 200)


def test_100kb_of_words_chunks_quickly() -> None:
    text = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. 東京 👍🏽 café.\n" * 1600)[:100_000]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        chunks = chunk_text(text, ChunkingOptions("words", 1000, 200))
        best = min(best, time.perf_counter() - started)
    assert len(chunks) > 10
    assert best < 0.1


@given(units=st.integers(0, 400), size=st.integers(1, 50), overlap_share=st.floats(0, 0.99))
@settings(max_examples=200, deadline=None)
def test_window_count_is_the_number_of_windows_made(units: int, size: int, overlap_share: float) -> None:
    """The chunk cap is checked with `window_count` before any chunk is built: it must agree."""
    from tldw_Server_API.app.core.Chunking.chunker import window_chunks, window_count

    overlap = min(size - 1, int(size * overlap_share))
    spans = [(2 * i, 2 * i + 1) for i in range(units)]
    assert window_count(units, size, overlap) == len(window_chunks("a " * units, spans, size, overlap))


def test_the_chunk_cap_refuses_before_chunking() -> None:
    from tldw_Server_API.app.core.errors import PayloadTooLarge

    text = " ".join(f"w{i}" for i in range(100))
    assert len(chunk_text(text, ChunkingOptions("words", 10, 0, max_chunks=10))) == 10
    with pytest.raises(PayloadTooLarge) as refused:
        chunk_text(text, ChunkingOptions("words", 10, 0, max_chunks=9))
    assert refused.value.param == "chunk_size"
