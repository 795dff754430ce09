"""The vector compactor: removes the vectors of soft-deleted media from exactly the collections the
storage stage writes (every model's media collection of the user, named by `media_collection`) in
whichever store the factory gives (Chroma embedded or server, pgvector). Idempotent: a second run
removes 0. Live media, other users and non-media collections (`vs_` stores) are never touched.
Imports the media DB, the vector-store factory and loguru; no FastAPI, no environment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from loguru import logger

from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDBFactory
from tldw_Server_API.app.core.Embeddings.stage_context import media_collections
from tldw_Server_API.app.core.errors import InvalidInput, TLDWError
from tldw_Server_API.app.core.periodic import run_periodically
from tldw_Server_API.app.core.RAG.vector_stores.factory import VectorStoreFactory

DELETE_SLICE = 500   # media ids per `$in` filter, well under the filter language's list limit


class CompactionFailed(TLDWError):
    """Some users could not be compacted (the others were); the details are in the log."""


@dataclass(frozen=True)
class CompactionReport:
    removed_vectors: int
    users: int           # users with a media database, scanned
    media: int           # soft-deleted media ids considered
    collections: int     # media collections visited (only users with deleted media are visited)

    def to_dict(self) -> dict[str, Any]:
        return {"object": "embedding.compaction", "removed_vectors": self.removed_vectors,
                "users": self.users, "media": self.media, "collections": self.collections}


# --- pure parts ----------------------------------------------------------------------------------

def id_slices(ids: Sequence[int], size: int = DELETE_SLICE) -> list[list[int]]:
    """`ids` in order, cut into slices of at most `size`."""
    if size < 1:
        raise InvalidInput("slice size must be at least 1", param="size")
    return [list(ids[start:start + size]) for start in range(0, len(ids), size)]


# --- I/O -----------------------------------------------------------------------------------------


class VectorCompactor:
    """Built once in the lifespan over the app's media DBs and vector-store factory."""

    def __init__(self, media_dbs: MediaDBFactory, vector_stores: VectorStoreFactory) -> None:
        self._media_dbs = media_dbs
        self._vector_stores = vector_stores

    def run_once(self) -> CompactionReport:
        """One pass over every user (blocking: call it in a thread). A user that fails is logged and
        the others are still compacted; then `CompactionFailed` is raised (the next run retries)."""
        reports: list[CompactionReport] = []
        failed: list[str] = []
        for user_id in self._media_dbs.user_ids():
            try:
                reports.append(self._compact_user(user_id))
            except Exception:
                logger.exception("vector compaction of user {} failed", user_id)
                failed.append(user_id)
        if failed:
            raise CompactionFailed(f"vector compaction failed for {len(failed)} user(s): {', '.join(failed)}")
        return CompactionReport(sum(r.removed_vectors for r in reports), len(reports),
                                sum(r.media for r in reports), sum(r.collections for r in reports))

    def _compact_user(self, user_id: str) -> CompactionReport:
        deleted = self._media_dbs.get(user_id).list_deleted_media_ids()
        if not deleted:
            # The store stays unopened: an embedded Chroma client would create the user's folder.
            return CompactionReport(removed_vectors=0, users=1, media=0, collections=0)
        store = self._vector_stores.for_user(user_id)
        names = media_collections(user_id, store.list_collections())
        removed = sum(store.delete_where(name, {"media_id": {"$in": part}})
                      for name in names for part in id_slices(deleted))
        if removed:
            logger.info("removed {} vectors of {} deleted media of user {}", removed, len(deleted), user_id)
        return CompactionReport(removed_vectors=removed, users=1, media=len(deleted), collections=len(names))

    async def run_forever(self, interval_seconds: float, stop: asyncio.Event) -> None:
        """`run_once` in a thread now and every `interval_seconds` until `stop` is set; a failing
        run is logged and the loop goes on."""
        async def step() -> None:
            try:
                await asyncio.to_thread(self.run_once)
            except CompactionFailed as exc:   # each user's traceback is logged already
                logger.error("{}; next run in {}s", exc.message, interval_seconds)
            except Exception:
                logger.exception("vector compaction run failed; next run in {}s", interval_seconds)

        await run_periodically(step, interval_seconds, stop, name="vector compactor")
