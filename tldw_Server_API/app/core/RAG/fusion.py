"""Reciprocal-rank fusion of ranked result lists (pure): the hybrid mode of RAG search merges the
FTS5 BM25 ranking and the vector ranking by summing 1 / (k + rank) per item, so neither score
scale has to be calibrated against the other. No I/O here.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

RRF_K = 60  # the constant of Cormack et al. (2009); dampens the weight of the very top ranks


def reciprocal_rank_fusion(rankings: Sequence[Sequence[K]], k: int = RRF_K, top_k: int | None = None) -> list[
        tuple[K, float]]:
    """Keys ordered by fused score (ties: first seen first); each ranking lists keys best first
    and a key repeated within one ranking counts once, at its best rank."""
    scores: dict[K, float] = {}
    for ranking in rankings:
        seen: set[K] = set()
        for rank, key in enumerate(ranking, start=1):
            if key in seen:
                continue
            seen.add(key)
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    ordered = sorted(scores.items(), key=lambda item: -item[1])  # stable: first seen wins ties
    return ordered[:top_k] if top_k is not None else ordered
