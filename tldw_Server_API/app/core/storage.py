"""The stores of the host and the plugin, built once from settings: per-user media DBs and vector
stores, the jobs DB and the vector-store metadata and batch DBs (SQLAlchemy, one engine per URL).
Imports core stores only; the wiring file (`services.py`) and the services that take the stores
import it, so none of them import the wiring file.
"""

from __future__ import annotations

from dataclasses import dataclass

from tldw_Server_API.app.core.config import Settings
from tldw_Server_API.app.core.DB_Management.Media_DB import MediaDBFactory
from tldw_Server_API.app.core.Embeddings._sql_engine import dispose_engine
from tldw_Server_API.app.core.Embeddings.media_embedding_jobs_db import JobsDB
from tldw_Server_API.app.core.Embeddings.vector_store_batches_db import VectorStoreBatchesDB
from tldw_Server_API.app.core.Embeddings.vector_store_files_db import VectorStoreFilesDB
from tldw_Server_API.app.core.Embeddings.vector_store_meta_db import VectorStoreMetaDB
from tldw_Server_API.app.core.Files.files_db import FilesDB
from tldw_Server_API.app.core.RAG.vector_stores.factory import VectorStoreFactory, create_vector_store_factory


@dataclass
class StorageServices:
    """Per-user stores of the host and the plugin: media DBs, vector stores, job and store DBs."""

    media_dbs: MediaDBFactory
    vector_stores: VectorStoreFactory
    jobs: JobsDB
    vector_store_meta: VectorStoreMetaDB
    vector_store_batches: VectorStoreBatchesDB
    jobs_db_url: str
    files: FilesDB
    vector_store_files: VectorStoreFilesDB

    def close(self) -> None:
        self.vector_stores.close()
        self.media_dbs.close_all()
        dispose_engine(self.jobs_db_url)


def build_storage(settings: Settings) -> StorageServices:
    config = settings.storage_config()
    return StorageServices(
        media_dbs=MediaDBFactory(config.data_dir),
        vector_stores=create_vector_store_factory(config),
        jobs=JobsDB(config.jobs_db_url),
        vector_store_meta=VectorStoreMetaDB(config.jobs_db_url),
        vector_store_batches=VectorStoreBatchesDB(config.jobs_db_url),
        jobs_db_url=config.jobs_db_url,
        files=FilesDB(config.jobs_db_url, config.data_dir, max_bytes=settings.files_max_bytes,
                      user_quota_bytes=settings.files_user_quota_bytes),
        vector_store_files=VectorStoreFilesDB(config.jobs_db_url),
    )
