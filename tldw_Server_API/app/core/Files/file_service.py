"""The Files API's service (behind `api/v1/endpoints/files_openai.py`): upload, list, read, read
content, delete a user's files through `FilesDB`, each call on a worker thread (hashing and disk
writes block). Every read and delete is scoped to the caller. Raises domain errors only.
"""

from __future__ import annotations

import asyncio

from tldw_Server_API.app.core.AuthNZ.api_keys import User
from tldw_Server_API.app.core.Embeddings._sql_engine import Order
from tldw_Server_API.app.core.Files.files_db import FileRecord, FilesDB


class FileService:
    def __init__(self, files: FilesDB) -> None:
        self._files = files

    @property
    def max_bytes(self) -> int:
        return self._files.max_bytes

    async def upload(self, user: User, filename: str, purpose: str, data: bytes,
                     expires_after: int | None = None) -> FileRecord:
        return await asyncio.to_thread(self._files.create, user.id, filename, purpose, data,
                                       expires_after=expires_after)

    async def page(self, user: User, *, limit: int, after: str | None, order: Order,
                   purpose: str | None) -> tuple[list[FileRecord], bool]:
        return await asyncio.to_thread(self._files.page, user.id, limit=limit, after=after, order=order,
                                       purpose=purpose)

    async def get(self, user: User, file_id: str) -> FileRecord:
        return await asyncio.to_thread(self._files.get, user.id, file_id)

    async def content(self, user: User, file_id: str) -> tuple[FileRecord, bytes]:
        record = await self.get(user, file_id)
        return record, await asyncio.to_thread(self._files.content, user.id, file_id)

    async def delete(self, user: User, file_id: str) -> bool:
        return await asyncio.to_thread(self._files.delete, user.id, file_id)
