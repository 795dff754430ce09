"""Reciprocal-rank fusion: items ranked well by both lists win; properties over random rankings."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tldw_Server_API.app.core.RAG.fusion import RRF_K, reciprocal_rank_fusion


def test_item_in_both_lists_beats_items_in_one() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "d", "a"]])
    assert [key for key, _ in fused][:2] == ["a", "c"]
    assert dict(fused)["a"] == 1 / (RRF_K + 1) + 1 / (RRF_K + 3)


def test_top_k_and_empty() -> None:
    assert reciprocal_rank_fusion([[], []]) == []
    assert len(reciprocal_rank_fusion([["a", "b", "c"]], top_k=2)) == 2


rankings = st.lists(st.lists(st.integers(0, 30), max_size=15), max_size=4)


@given(rankings)
def test_every_key_once_scores_descending(lists: list[list[int]]) -> None:
    fused = reciprocal_rank_fusion(lists)
    keys = [key for key, _ in fused]
    assert len(keys) == len(set(keys)) == len({k for ranking in lists for k in ranking})
    scores = [score for _, score in fused]
    assert scores == sorted(scores, reverse=True)


@given(st.lists(st.integers(0, 30), unique=True, min_size=1, max_size=15))
def test_single_ranking_is_preserved(ranking: list[int]) -> None:
    assert [key for key, _ in reciprocal_rank_fusion([ranking])] == ranking
