"""Wire models of the pipeline operator routes (`/api/v1/embeddings/dlq...`, jobs, audit)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, StrictStr

from tldw_Server_API.app.api.v1.schemas.common import WireInt
from tldw_Server_API.app.api.v1.schemas.media import EmbeddingOptionsModel
from tldw_Server_API.app.api.v1.schemas.media_embeddings import JobView
from tldw_Server_API.app.core.Embeddings.services.reembed_worker import ReembedScope


class DeadLetterState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal["quarantined", "approved_for_requeue", "ignored"]
    note: StrictStr | None = Field(None, max_length=1000, description="Why (required to approve a requeue).")


class RequeueRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[StrictStr] = Field(..., min_length=1, max_length=100, description="Dead letter ids, all approved.")


class PriorityRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: Literal["high", "normal", "low"]


class ListPage(BaseModel):
    """OpenAI's list page shape."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False

    @classmethod
    def of(cls, items: list[dict[str, Any]], has_more: bool) -> ListPage:
        return cls(data=items, first_id=items[0]["id"] if items else None,
                   last_id=items[-1]["id"] if items else None, has_more=has_more)


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobView]


class ReembedRequest(EmbeddingOptionsModel):
    """Which media (one item, a user's, or all) and the job options (model, chunking, priority)."""

    user_id: StrictStr | None = Field(None, max_length=64, description="Whose media (with `media_id`: one item).")
    media_id: WireInt | None = Field(None, ge=1, description="One media item of `user_id`.")
    all_media: StrictBool = Field(False, description="Every user's media (a model change).")
    at: AwareDatetime | None = Field(None, description="Start then (ISO 8601 with a zone); now when absent.")

    def scope(self) -> ReembedScope:
        return ReembedScope(self.user_id, self.media_id, self.all_media)
