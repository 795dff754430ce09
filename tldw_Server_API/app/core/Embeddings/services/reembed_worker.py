"""An operator's re-embed (`POST /api/v1/embeddings/reembed/schedule`): one media item, a user's
media, or every user's media (a model change), now or at a given time. It expands the request
into one media embedding job per media item through the usual job path (`MediaEmbeddingService`:
same spec, same stages, either executor) and answers with their ids; each job's record reports
`embedded_chunks` and `skipped_chunks`. The jobs reuse the stored vector of every chunk whose text
hash and model are unchanged (REEMBED_SKIP_UNCHANGED), so only changed chunks reach the model; the
media's old vectors (orphaned chunks, an earlier model's collection) are dropped only once the new
set is stored (`job_steps.settle`). A scheduled job waits in the jobs DB until the re-embed
consumer starts it (`reembed_consumer.py`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from tldw_Server_API.app.core.AuthNZ.api_keys import User, validate_user_id
from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDBFactory
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobRecord
from tldw_Server_API.app.core.Embeddings.media_embedding_service import EmbeddingOptions, MediaEmbeddingService
from tldw_Server_API.app.core.Embeddings.vector_store_files_db import VectorStoreFilesDB
from tldw_Server_API.app.core.errors import InvalidInput, NotFound


@dataclass(frozen=True)
class ReembedScope:
    """Exactly one of: `user_id` + `media_id` (one item), `user_id` (their media), `all_media`."""

    user_id: str | None = None
    media_id: int | None = None
    all_media: bool = False

    def check(self) -> None:
        if self.all_media:
            if self.user_id is not None or self.media_id is not None:
                raise InvalidInput("all_media re-embeds every user's media: give no user_id or media_id",
                                   param="all_media")
            return
        if self.user_id is None:
            raise InvalidInput("give user_id (with media_id for one item), or all_media=true", param="user_id")
        validate_user_id(self.user_id)


class ReembedWorker:
    def __init__(self, media_embeddings: MediaEmbeddingService, media_dbs: MediaDBFactory,
                 store_files: VectorStoreFilesDB | None = None) -> None:
        self._media_embeddings = media_embeddings
        self._media_dbs = media_dbs
        self._store_files = store_files

    def _targets(self, scope: ReembedScope) -> list[tuple[str, list[int]]]:
        """(user, media ids) to re-embed. A user's or everyone's media leaves out vector-store
        files: they are embedded with their store's model, which a re-embed must not change."""
        if scope.user_id is not None and scope.media_id is not None:
            return [(scope.user_id, [scope.media_id])]
        users = [scope.user_id] if scope.user_id is not None else self._media_dbs.user_ids()
        targets = []
        for uid in users:
            files = self._store_files.media_ids(uid) if self._store_files is not None else set()
            ids = [i for i in self._media_dbs.get(uid).all_live_media_ids() if i not in files]
            if ids:
                targets.append((uid, ids))
        return targets

    async def schedule(self, operator: User, scope: ReembedScope, options: EmbeddingOptions,
                       at: datetime | None = None) -> list[JobRecord]:
        """The jobs created (one per live media item of the scope)."""
        scope.check()
        targets = await asyncio.to_thread(self._targets, scope)
        count = sum(len(ids) for _, ids in targets)
        if not count:
            raise NotFound("the scope holds no live media to re-embed", param="user_id")
        await self._media_embeddings.manager.check_capacity(count)
        jobs: list[JobRecord] = []
        for user_id, media_ids in targets:
            jobs += await self._media_embeddings.reembed(operator, user_id, media_ids, options, at)
        return jobs
