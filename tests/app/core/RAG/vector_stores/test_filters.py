"""The metadata-filter language without any store: validation messages, the Chroma translation
(property: it means the same as the filter it came from), and the SQL translation (property:
field names and values only ever travel as parameters)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tldw_Server_API.app.core.errors import InvalidInput
from tldw_Server_API.app.core.RAG.vector_stores.filters import (
    AllOf,
    AnyOf,
    Condition,
    matches,
    parse_where,
    to_chroma_where,
    to_sql,
)


@pytest.mark.parametrize(("where", "message"), [
    ({"kind": {"$gt": "a"}}, "$gt on 'kind' needs a number"),
    ({"flag": {"$lt": True}}, "$lt on 'flag' needs a number"),
    ({"x": {"$like": "a"}}, "unknown operator '$like'"),
    ({"x": {"$in": []}}, "non-empty list"),
    ({"x": {"$in": "abc"}}, "non-empty list"),
    ({"x": {"$in": [1, "1"]}}, "mixes value types"),
    ({"x": {"$eq": 1, "$ne": 2}}, "exactly one operator"),
    ({"$not": {"x": 1}}, "unknown logical operator '$not'"),
    ({"$and": []}, "$and needs a non-empty list"),
    ({"$or": {"x": 1}}, "$or needs a non-empty list"),
    ({"$and": [{}]}, "non-empty object"),
    ({"bad key": 1}, "field names match"),
    ({"x": None}, "strings, numbers or booleans"),
    ({"x": {"nested": 1}}, "unknown operator 'nested'"),
    ({"x": float("nan")}, "finite"),
])
def test_invalid_filters_say_what_is_wrong(where: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_where(where)
    assert message in info.value.message and info.value.param == "where"


def test_too_deep_is_refused() -> None:
    where: dict[str, Any] = {"x": 1}
    for _ in range(10):
        where = {"$and": [where]}
    with pytest.raises(InvalidInput, match="deeper"):
        parse_where(where)


def test_parse_shapes() -> None:
    assert parse_where(None) is None and parse_where({}) is None
    assert parse_where({"a": 1}) == Condition("a", "$eq", 1)
    both = AllOf((Condition("a", "$eq", 1), Condition("b", "$in", ("x",))))
    assert parse_where({"a": 1, "b": {"$in": ["x"]}}) == both
    assert to_chroma_where(parse_where({"$or": [{"a": 1}]})) == {"a": {"$eq": 1}}  # type: ignore[arg-type]
    assert to_chroma_where(parse_where({"a": {"$in": [1, 2.5]}})) == {"a": {"$in": [1.0, 2.5]}}  # type: ignore[arg-type]


FIELDS = st.sampled_from(["a", "b", "c"])
SCALARS = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, 2.0, -1.5]), st.sampled_from(["x", "y", "1"]),
                    st.booleans())
NUMBERS = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, 2.0, -1.5]))


@st.composite
def conditions(draw: st.DrawFn) -> Condition:
    field, op = draw(FIELDS), draw(st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"]))
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return Condition(field, op, draw(NUMBERS))
    if op in ("$in", "$nin"):
        kind = draw(st.sampled_from([NUMBERS, st.sampled_from(["x", "y", "1"]), st.booleans()]))
        return Condition(field, op, tuple(draw(st.lists(kind, min_size=1, max_size=3))))
    return Condition(field, op, draw(SCALARS))


FILTERS = st.recursive(conditions(), lambda inner: st.one_of(
    st.lists(inner, min_size=1, max_size=3).map(lambda xs: AllOf(tuple(xs))),
    st.lists(inner, min_size=1, max_size=3).map(lambda xs: AnyOf(tuple(xs)))), max_leaves=6)
METADATA = st.dictionaries(FIELDS, SCALARS, max_size=3)


@settings(max_examples=300, deadline=None)
@given(FILTERS, st.lists(METADATA, min_size=1, max_size=5))
def test_chroma_translation_keeps_the_meaning(node: Any, metadatas: list[dict[str, Any]]) -> None:
    translated = parse_where(to_chroma_where(node))
    for metadata in metadatas:
        assert matches(translated, metadata) == matches(node, metadata)


@settings(max_examples=200, deadline=None)
@given(FILTERS)
def test_sql_carries_fields_and_values_as_parameters(node: Any) -> None:
    text, params = to_sql(node)
    assert text.count("%s") == len(params)
    assert '"' not in text and "'a'" not in text and "'x'" not in text
    assert all(p in ("a", "b", "c") or isinstance(p, (str, float, list)) for p in params)


def test_matches_semantics() -> None:
    md = {"n": 1, "f": True, "s": "1"}
    assert matches(parse_where({"n": 1.0}), md) and not matches(parse_where({"f": 1}), md)
    assert not matches(parse_where({"s": 1}), md) and matches(parse_where({"s": "1"}), md)
    assert matches(parse_where({"missing": {"$ne": 1}}), md) and matches(parse_where({"missing": {"$nin": [1]}}), md)
    assert not matches(parse_where({"f": {"$gte": 0}}), md)  # booleans are not numbers
    assert not matches(parse_where({"s": {"$gte": 0}}), md)
    assert matches(None, None)
