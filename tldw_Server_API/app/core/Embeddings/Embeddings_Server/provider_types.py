"""The provider protocol and the value types every engine module shares: what a provider knows of a
model (`ModelInfo`), what it returns (`EmbeddingBatch`), a resolved `provider:model`, a catalog row.
Imports numpy only: adapters, the registry and the batcher all import it, and it imports none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """What a provider knows about one model without running it."""

    provider: str
    model_id: str
    dimension: int | None
    max_tokens: int | None
    source: str = ""          # where the weights come from: package, path, cache, remote
    revision: str = ""        # revision of the local copy ("" unknown); part of the cache key
    engine: str = ""          # local models: `provider:precision` that computes the vectors ("" remote)


@dataclass(frozen=True)
class EmbeddingBatch:
    vectors: np.ndarray       # (n, d) float32, rows in input order; not yet normalised
    token_counts: list[int]   # tokens the model processed, per input


@runtime_checkable
class EmbeddingProvider(Protocol):
    """One provider family. `embed` gets texts already validated against `count_tokens`, and
    their counts (capped at the model's max) when the provider could count them."""

    name: str

    def model_info(self, model_id: str) -> ModelInfo: ...

    async def count_tokens(self, model_id: str, texts: Sequence[str]) -> list[int] | None: ...

    async def embed(
        self, model_id: str, texts: Sequence[str], token_counts: Sequence[int] | None = None
    ) -> EmbeddingBatch: ...

    def loaded_models(self) -> list[str]: ...

    async def health(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ResolvedModel:
    provider: EmbeddingProvider
    info: ModelInfo


@dataclass(frozen=True)
class ModelListing:
    info: ModelInfo
    available: bool
    loaded: bool
    default: bool
