"""Free text to FTS5 MATCH: terms quoted (user syntax is inert), prefix `*` kept, duplicates and
punctuation-only terms dropped, blank queries refused; any text gives an expression SQLite accepts."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tldw_Server_API.app.core.DB_Management.fts_query import MAX_TERMS, build_match_expression, fts_terms
from tldw_Server_API.app.core.errors import InvalidInput


def test_terms_are_quoted_and_operators_are_plain_words() -> None:
    assert fts_terms('cats AND "dogs" (NEAR) col:x say"hi') == [
        '"cats"', '"AND"', '"""dogs"""', '"(NEAR)"', '"col:x"', '"say""hi"']
    assert build_match_expression("a b") == '"a" OR "b"'
    assert build_match_expression("a b", match_all=True) == '"a" AND "b"'


def test_prefix_star_duplicates_and_punctuation() -> None:
    assert fts_terms("foot* foot* *** - ... foot x**") == ['"foot"*', '"foot"', '"x"*']
    assert build_match_expression("?? !! ***") is None


def test_term_count_is_bounded() -> None:
    assert len(fts_terms(" ".join(f"w{i}" for i in range(500)))) == MAX_TERMS


@pytest.mark.parametrize("query", ["", " ", "\n\t\u3000"])
def test_blank_query_is_invalid(query: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        build_match_expression(query)
    assert caught.value.param == "query"


@pytest.fixture(scope="module")
def fts() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(text, tokenize='unicode61 remove_diacritics 2')")
    conn.executemany("INSERT INTO t (text) VALUES (?)", [("football and café",), ("東京 タワー",), ("x",)])
    return conn


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1).filter(str.strip), st.booleans())
def test_any_text_is_a_valid_expression(fts: sqlite3.Connection, query: str, match_all: bool) -> None:
    expression = build_match_expression(query, match_all=match_all)
    if expression is not None:
        fts.execute("SELECT rowid FROM t WHERE t MATCH ?", (expression,)).fetchall()


def test_expressions_match_what_they_should(fts: sqlite3.Connection) -> None:
    def rows(query: str, match_all: bool = False) -> list[int]:
        expression = build_match_expression(query, match_all=match_all)
        return [r[0] for r in fts.execute("SELECT rowid FROM t WHERE t MATCH ? ORDER BY rowid", (expression,))]

    assert rows("foot*") == [1]
    assert rows("foot") == []
    assert rows("CAFE") == [1]
    assert rows("football missing") == [1]
    assert rows("football missing", match_all=True) == []
    assert rows('"東京" x') == [2, 3]
