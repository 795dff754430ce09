"""Pure parts of the vector stores API: store width rule, record checks (all-or-nothing and per
record), OpenAI search filters (property-tested against a reference evaluator of OpenAI's
semantics), merging hits of several queries, result sources, chunking options, paging checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tldw_Server_API.app.core.Chunking import Chunk
from tldw_Server_API.app.core.Embeddings.vector_store_records import (
    VectorInput,
    check_page,
    checked_where,
    hit_source,
    media_chunk_records,
    merge_hits,
    openai_filter_to_where,
    prepare_record,
    prepare_records,
    query_vector,
    store_dimensions,
    triage_records,
    usage_bytes,
)
from tldw_Server_API.app.core.errors import InvalidInput
from tldw_Server_API.app.core.RAG.vector_stores.base import VectorHit
from tldw_Server_API.app.core.RAG.vector_stores.filters import matches, parse_where

DIM = 4


def test_store_width_comes_from_the_model() -> None:
    assert store_dimensions(None, 384, "m") == 384
    assert store_dimensions(384, 384, "m") == 384
    assert store_dimensions(1536, None, "remote") == 1536
    with pytest.raises(InvalidInput) as mismatch:
        store_dimensions(128, 384, "m")
    assert mismatch.value.code == "dimension_mismatch" and mismatch.value.param == "dimensions"
    for bad in (0, -1, True, 1.5, "384", 16_001):
        with pytest.raises(InvalidInput):
            store_dimensions(bad, 384, "m")
    with pytest.raises(InvalidInput, match="not known"):
        store_dimensions(None, None, "remote")


def test_prepare_record_checks_each_field_and_names_it() -> None:
    record = prepare_record(0, VectorInput(values=[1, 0, 0, 0], metadata={"a": 1, "gone": None}), DIM)
    assert record.id.startswith("vec_") and record.values is not None and record.values.dtype == np.float32
    assert record.metadata == {"a": 1} and record.content == ""
    text = prepare_record(1, VectorInput(id="t", content="hello"), DIM)
    assert text.values is None and text.content == "hello"
    cases: list[tuple[VectorInput, str, str | None]] = [
        (VectorInput(values=[1, 0]), "records[3].values", "dimension_mismatch"),
        (VectorInput(values=[0, 0, 0, 0]), "records[3].values", None),
        (VectorInput(), "records[3]", None),
        (VectorInput(content="   "), "records[3]", None),
        (VectorInput(id="", content="x"), "records[3].id", None),
        (VectorInput(content="x", metadata={"bad key!": 1}), "records[3].metadata", None),
        (VectorInput(content="x", metadata={"k": [1]}), "records[3].metadata", None),
        (VectorInput(content="x" * 100_001), "records[3].content", None),
    ]
    for given_record, param, code in cases:
        with pytest.raises(InvalidInput) as error:
            prepare_record(3, given_record, DIM)
        assert error.value.param == param, given_record
        if code:
            assert error.value.code == code


def test_prepare_records_is_all_or_nothing() -> None:
    good = [VectorInput(id="a", values=[1, 0, 0, 0]), VectorInput(id="b", content="x")]
    assert [r.id for r in prepare_records(good, DIM, 10)] == ["a", "b"]
    with pytest.raises(InvalidInput) as duplicate:
        prepare_records([*good, VectorInput(id="a", content="y")], DIM, 10)
    assert duplicate.value.param == "records[2].id"
    with pytest.raises(InvalidInput, match="1 to 10"):
        prepare_records([], DIM, 10)
    with pytest.raises(InvalidInput, match="1 to 1"):
        prepare_records(good, DIM, 1)
    with pytest.raises(InvalidInput) as bad:
        prepare_records([good[0], VectorInput(values=[1, 2])], DIM, 10)
    assert bad.value.param == "records[1].values"


@given(st.lists(st.sampled_from([DIM, DIM, 3, 0]), min_size=1, max_size=30), st.integers(0, 1000))
def test_triage_keeps_each_record_exactly_once(widths: list[int], start: int) -> None:
    records = [VectorInput(id=f"r{i}", values=[1.0] * w) if w else VectorInput(id=f"r{i}")
               for i, w in enumerate(widths)]
    good, bad = triage_records(records, DIM, start)
    assert len(good) + len(bad) == len(records)
    assert [r.id for r in good] == [f"r{i}" for i, w in enumerate(widths) if w == DIM]
    assert [r.index for r in good] == [start + i for i, w in enumerate(widths) if w == DIM]
    assert all(error.param and error.param.startswith("records[") for error in bad)


def test_query_vector_needs_exactly_one_of_text_or_vector() -> None:
    assert query_vector("cats", None, DIM) is None
    assert query_vector(None, [0, 1, 0, 0], DIM) is not None
    for text, vector, param in (("x", [1, 0, 0, 0], "query"), (None, None, "query"), ("  ", None, "query"),
                                (None, [1, 0], "vector")):
        with pytest.raises(InvalidInput) as error:
            query_vector(text, vector, DIM)
        assert error.value.param == param


def test_checked_where_reports_under_the_wire_name() -> None:
    assert checked_where(None) is None and checked_where({}) is None
    assert checked_where({"a": 1}) == {"a": 1}
    for bad in ({"a": {"$gt": "x"}}, {"$not": {}}, {"a": {"$in": []}}, "a=1"):
        with pytest.raises(InvalidInput) as error:
            checked_where(bad, "filters")  # type: ignore[arg-type]
        assert error.value.param == "filters"


# --- OpenAI filters ----------------------------------------------------------------------------------
KEYS = ["a", "b", "c"]
scalars = st.one_of(st.booleans(), st.integers(-3, 3), st.sampled_from([0.5, -1.5]), st.sampled_from(["x", "y"]))
numbers = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -1.5]))


def comparison() -> st.SearchStrategy[dict[str, Any]]:
    eq = st.builds(lambda t, k, v: {"type": t, "key": k, "value": v}, st.sampled_from(["eq", "ne"]),
                   st.sampled_from(KEYS), scalars)
    ranged = st.builds(lambda t, k, v: {"type": t, "key": k, "value": v}, st.sampled_from(["gt", "gte", "lt", "lte"]),
                       st.sampled_from(KEYS), numbers)
    listed = st.builds(lambda t, k, v: {"type": t, "key": k, "value": v}, st.sampled_from(["in", "nin"]),
                       st.sampled_from(KEYS), st.lists(st.sampled_from(["x", "y", "z"]), min_size=1, max_size=3))
    return st.one_of(eq, ranged, listed)


openai_filters = st.recursive(comparison(), lambda children: st.builds(
    lambda t, fs: {"type": t, "filters": fs}, st.sampled_from(["and", "or"]), st.lists(children, min_size=1,
                                                                                        max_size=3)), max_leaves=8)
metadatas = st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3)


def kind(value: object) -> str:
    return "bool" if isinstance(value, bool) else "number" if isinstance(value, (int, float)) else "string"


def reference(node: dict[str, Any], meta: dict[str, Any]) -> bool:
    """OpenAI's semantics as documented for our stores: equality is typed, ranges need numbers,
    `ne`/`nin` also match records without the field."""
    if node["type"] in ("and", "or"):
        results = [reference(child, meta) for child in node["filters"]]
        return all(results) if node["type"] == "and" else any(results)
    key, value, present = node["key"], node["value"], node["key"] in meta
    actual = meta.get(key)

    def equal(v: object) -> bool:
        return present and kind(actual) == kind(v) and actual == v

    if node["type"] in ("eq", "ne"):
        return equal(value) if node["type"] == "eq" else not equal(value)
    if node["type"] in ("in", "nin"):
        hit = any(equal(v) for v in value)
        return hit if node["type"] == "in" else not hit
    if not present or kind(actual) != "number":
        return False
    a, b = float(actual), float(value)
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[node["type"]]


@settings(max_examples=300)
@given(openai_filters, metadatas)
def test_openai_filters_mean_what_openai_says(node: dict[str, Any], meta: dict[str, Any]) -> None:
    where = openai_filter_to_where(node)
    assert matches(parse_where(where), meta) == reference(node, meta)


def test_openai_filter_translation_and_errors() -> None:
    assert openai_filter_to_where({"type": "eq", "key": "k", "value": 1}) == {"k": {"$eq": 1}}
    assert openai_filter_to_where({"type": "and", "filters": [{"type": "in", "key": "k", "value": ("a",)}]}) == {
        "$and": [{"k": {"$in": ["a"]}}]}
    for bad in ({"type": "near", "key": "k", "value": 1}, {"key": "k", "value": 1}, {"type": "or", "filters": []},
                {"type": "eq", "key": 3, "value": 1}, [1], {"type": "and", "filters": "x"}):
        with pytest.raises(InvalidInput) as error:
            openai_filter_to_where(bad)
        assert error.value.param == "filters"
    deep: dict[str, Any] = {"type": "eq", "key": "k", "value": 1}
    for _ in range(10):
        deep = {"type": "and", "filters": [deep]}
    with pytest.raises(InvalidInput, match="deeper"):
        openai_filter_to_where(deep)


# --- hits ---------------------------------------------------------------------------------------------
hit_lists = st.lists(st.lists(st.builds(lambda i, s: VectorHit(id=f"id{i}", score=s, document=""),
                                        st.integers(0, 9), st.floats(-1, 1)), max_size=10), min_size=1, max_size=4)


@given(hit_lists, st.integers(1, 12), st.one_of(st.none(), st.floats(-1, 1)))
def test_merge_hits_keeps_each_record_once_with_its_best_score(lists: list[list[VectorHit]], limit: int,
                                                               threshold: float | None) -> None:
    merged = merge_hits(lists, limit, threshold)
    best: dict[str, float] = {}
    for hits in lists:
        for hit in hits:
            best[hit.id] = max(best.get(hit.id, -2.0), hit.score)
    eligible = {i: s for i, s in best.items() if threshold is None or s >= threshold}
    assert len(merged) == min(limit, len(eligible))
    assert len({h.id for h in merged}) == len(merged)
    assert all(h.score == best[h.id] for h in merged)
    assert [h.score for h in merged] == sorted((h.score for h in merged), reverse=True)
    if merged:  # nothing left out beats what was kept
        assert all(s <= merged[-1].score for i, s in eligible.items() if i not in {h.id for h in merged})


def test_hit_source_names_file_media_or_record() -> None:
    assert hit_source("r", {"file_id": "file-1", "filename": "a.txt"}) == ("file-1", "a.txt")
    assert hit_source("r", {"media_id": 7, "title": "Notes"}) == ("media_7", "Notes")
    assert hit_source("r", {"n": 1}) == ("r", "r")


def test_media_chunk_records_are_deterministic_and_skip_blank_chunks() -> None:
    chunks = [Chunk(0, "alpha beta", 0, 10), Chunk(1, "   ", 11, 14), Chunk(2, "gamma", 15, 20)]
    records = media_chunk_records(5, "T", "hash", chunks)
    assert [r.id for r in records] == ["media_5_chunk_0", "media_5_chunk_2"]
    assert records[1].metadata == {"media_id": 5, "chunk_index": 2, "start_char": 15, "end_char": 20, "title": "T",
                                   "content_hash": "hash"}
    assert records[0].content == "alpha beta" and records[0].values is None


def test_paging_and_usage() -> None:
    assert check_page(10, 0, 100) == (10, 0)
    for limit, offset, param in ((0, 0, "limit"), (101, 0, "limit"), (True, 0, "limit"), (1, -1, "offset")):
        with pytest.raises(InvalidInput) as error:
            check_page(limit, offset, 100)
        assert error.value.param == param
    assert usage_bytes(3, 384) == 3 * 384 * 4
