"""Turns a user's free-text search into a safe SQLite FTS5 MATCH expression. Pure, standard library
only. Every whitespace-separated term is quoted as an FTS5 string, so operators (AND, OR, NOT, NEAR),
column filters, parentheses and quotes typed by the user are plain text and can never be a syntax
error. A trailing `*` keeps its prefix-search meaning.
"""

from __future__ import annotations

import re

from tldw_Server_API.app.core.errors import InvalidInput

MAX_TERMS = 64  # bounds the cost of a pasted paragraph used as a query
_WORD_CHAR = re.compile(r"[^\W_]")  # a letter or digit: what FTS5's unicode61 tokenizer indexes


def fts_terms(query: str) -> list[str]:
    """The quoted terms of `query`, in order, without duplicates. Raises InvalidInput for a blank
    query; a query of punctuation only gives []."""
    if not query or not query.strip():
        raise InvalidInput("query must not be empty", param="query")
    terms: list[str] = []
    for raw in query.replace("\x00", " ").split():  # FTS5 strings end at a NUL
        prefix = raw.endswith("*")
        word = raw.rstrip("*")
        if not _WORD_CHAR.search(word):
            continue  # nothing FTS5 would index: an empty phrase matches nothing anyway
        term = '"' + word.replace('"', '""') + '"' + ("*" if prefix else "")
        if term not in terms:
            terms.append(term)
        if len(terms) == MAX_TERMS:
            break
    return terms


def build_match_expression(query: str, match_all: bool = False) -> str | None:
    """An FTS5 MATCH expression for `query`: terms joined by OR (ranked by BM25; good recall for
    natural-language questions) or, with `match_all`, by AND. None when no term is searchable."""
    terms = fts_terms(query)
    if not terms:
        return None
    return (" AND " if match_all else " OR ").join(terms)
