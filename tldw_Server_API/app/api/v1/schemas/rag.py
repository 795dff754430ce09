"""Wire models of `POST /api/v1/rag/search`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from tldw_Server_API.app.api.v1.schemas.common import WireInt
from tldw_Server_API.app.api.v1.schemas.media import MediaId
from tldw_Server_API.app.core.RAG.search import SearchRequest, SearchResult


class RAGSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StrictStr
    top_k: WireInt = 10
    mode: Literal["vector", "fts", "hybrid"] = "hybrid"
    media_ids: list[MediaId] | None = Field(None, max_length=1000)
    filters: Any = None     # a where-object; its shape is checked by the core (clear 400s)

    def to_request(self, mode: str | None = None) -> SearchRequest:
        return SearchRequest(query=self.query, top_k=self.top_k, mode=mode or self.mode,  # type: ignore[arg-type]
                             media_ids=self.media_ids, filters=self.filters)


class RAGResult(BaseModel):
    media_id: int
    title: str
    chunk_index: int
    text: str
    start_char: int = Field(description="Where the chunk starts in the media's text (`content[start_char:end_char]`).")
    end_char: int
    score: float
    page: int | None = Field(None, description="1-based page the chunk starts on, for paged sources (PDF).")

    @classmethod
    def of(cls, result: SearchResult) -> RAGResult:
        return cls(**result.__dict__)


class RAGSearchResponse(BaseModel):
    object: Literal["list"] = "list"
    query: str
    mode: str
    data: list[RAGResult]
