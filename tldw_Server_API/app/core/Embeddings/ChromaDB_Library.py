"""Per-user Chroma: validated user ids, confined paths (`<data_dir>/users/<id>/chroma`), one cached
`PersistentClient` per user (or, in client/server mode, an `HttpClient` of a Chroma server scoped
to the user's own database), and collection helpers (cosine space, never Chroma's default embedding
function: vectors are always passed in). `force_stub` swaps in `InMemoryChromaClient`, an
in-memory client with the same semantics, for tests of other modules.

Imports chromadb lazily (inside `ChromaClientManager`); nothing is created at import time.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tldw_Server_API.app.core.AuthNZ.api_keys import validate_user_id as validate_account_id
from tldw_Server_API.app.core.errors import InvalidInput, ServiceUnavailable
from tldw_Server_API.app.core.RAG.vector_stores.filters import matches, parse_where

DIMENSION_KEY = "tldw_dimension"  # collection metadata: the vector width fixed at creation
STUB_MAX_BATCH = 5461  # what chromadb 1.x reports for its SQLite backend


def validate_user_id(user_id: object) -> str:
    """The user id as a path-safe string (`[A-Za-z0-9_-]{1,64}`; non-negative ints accepted)."""
    if isinstance(user_id, int) and not isinstance(user_id, bool) and user_id >= 0:
        user_id = str(user_id)
    return validate_account_id(user_id)


def user_chroma_path(base_dir: Path | str, user_id: object) -> Path:
    """`<base>/users/<user_id>/chroma`, resolved; refuses any path that leaves the base, and a
    symlinked `users/<id>` or `chroma` (a link to another user's store is an escape as well)."""
    uid = validate_user_id(user_id)
    base = Path(base_dir).resolve()
    user_dir = base / "users" / uid
    candidate = user_dir / "chroma"
    if user_dir.is_symlink() or candidate.is_symlink():
        raise InvalidInput("user storage path is a symbolic link", param="user_id")
    resolved = candidate.resolve()
    if not resolved.is_relative_to(base):
        raise InvalidInput("user storage path escapes the data directory", param="user_id")
    return resolved


def media_collection_name(user_id: object) -> str:
    """The per-user collection of media chunks."""
    return f"user_{validate_user_id(user_id)}_media_embeddings"


def media_chunk_id(media_id: int, chunk_index: int) -> str:
    """Deterministic chunk id: re-runs overwrite, never duplicate."""
    return f"media_{media_id}_chunk_{chunk_index}"


def user_database_name(user_id: object) -> str:
    """A user's database on a Chroma server (client/server mode): users never share collections."""
    return f"tldw_{validate_user_id(user_id)}"


class ChromaClientManager:
    """One client per user, created on first use and cached; thread-safe. Embedded: a
    `PersistentClient` over the user's folder. With `url`: an `HttpClient` of a Chroma server,
    one database per user in the default tenant (created on first use)."""

    def __init__(self, data_dir: Path | str, force_stub: bool = False, *, url: str | None = None,
                 token: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.force_stub = force_stub
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"} if token else None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._admin: Any = None

    def client(self, user_id: object) -> Any:
        uid = validate_user_id(user_id)
        with self._lock:
            existing = self._clients.get(uid)
            if existing is None:
                existing = self._clients[uid] = self._open(uid)
            return existing

    def _open(self, uid: str) -> Any:
        if self.force_stub:
            return InMemoryChromaClient()
        if self.url is not None:
            return self._open_remote(uid)
        path = user_chroma_path(self.data_dir, uid)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = user_chroma_path(self.data_dir, uid)  # re-check: nothing swapped in a link meanwhile
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        try:
            return chromadb.PersistentClient(path=str(path), settings=settings)
        except Exception as exc:
            if not is_storage_failure(exc):
                raise
            _forget_failed_system(str(path))
            raise store_unavailable() from exc

    def _server_settings(self) -> Any:
        from urllib.parse import urlsplit

        from chromadb.config import Settings

        parts = urlsplit(str(self.url))
        ssl = parts.scheme == "https"
        return Settings(chroma_api_impl="chromadb.api.fastapi.FastAPI", chroma_server_host=parts.hostname,
                        chroma_server_http_port=parts.port or (443 if ssl else 80), chroma_server_ssl_enabled=ssl,
                        chroma_server_headers=self._headers, anonymized_telemetry=False, allow_reset=False)

    def _open_remote(self, uid: str) -> Any:
        """The user's database on the server (created if missing), as a client scoped to it."""
        import chromadb
        from chromadb.config import DEFAULT_TENANT

        settings = self._server_settings()
        database = user_database_name(uid)
        try:
            if self._admin is None:
                self._admin = chromadb.AdminClient(settings)
            try:
                self._admin.get_database(database, tenant=DEFAULT_TENANT)
            except Exception as exc:  # noqa: BLE001 - chromadb raises NotFoundError (or a plain error) here
                if is_storage_failure(exc):
                    raise
                self._admin.create_database(database, tenant=DEFAULT_TENANT)
            return chromadb.HttpClient(host=settings.chroma_server_host, port=settings.chroma_server_http_port,
                                       ssl=settings.chroma_server_ssl_enabled, headers=self._headers,
                                       settings=settings, tenant=DEFAULT_TENANT, database=database)
        except Exception as exc:
            if not is_storage_failure(exc):
                raise
            raise store_unavailable() from exc

    def heartbeat(self) -> None:
        """One round trip to the Chroma server (health probes); raises what the client raises."""
        import chromadb
        from chromadb.config import DEFAULT_TENANT

        if self._admin is None:
            self._admin = chromadb.AdminClient(self._server_settings())
        self._admin.get_tenant(DEFAULT_TENANT)

    def close_all(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            close = getattr(client, "close", None)
            if close is not None:
                close()


def _forget_failed_system(path: str) -> None:
    """chromadb caches a client's `System` per path before starting it, so a start that failed
    (an unwritable directory) stays cached half-built and every later client of that path fails
    with "'RustBindingsAPI' object has no attribute 'bindings'". Drop it so the next try starts
    afresh (chromadb has no public call for one path; `clear_system_cache` drops every user's)."""
    from chromadb.api.shared_system_client import SharedSystemClient

    systems = getattr(SharedSystemClient, "_identifier_to_system", None)
    if isinstance(systems, dict):
        systems.pop(path, None)


def store_unavailable() -> ServiceUnavailable:
    """What callers see when Chroma's storage fails: 503, as for pgvector down (details in the log)."""
    return ServiceUnavailable("the vector store is unavailable", retry_after=1.0)


def is_storage_failure(exc: BaseException) -> bool:
    """An error of Chroma's storage (disk full or unwritable, a broken database, a client that
    did not start, a Chroma server out of reach), as opposed to a missing collection or a bug of
    ours. chromadb is consulted only when it is loaded: an error cannot come from it otherwise."""
    errors = sys.modules.get("chromadb.errors")
    if errors is not None and isinstance(exc, errors.ChromaError):
        return not isinstance(exc, errors.NotFoundError)
    httpx = sys.modules.get("httpx")    # the Chroma server's client: unreachable, timed out
    if httpx is not None and isinstance(exc, (httpx.TransportError, httpx.HTTPStatusError)):
        return not (isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 404)
    return isinstance(exc, (sqlite3.Error, OSError))


# --- collection helpers (real Chroma and the stub alike) -----------------------------------------

def _not_found_errors(client: Any) -> tuple[type[BaseException], ...]:
    if isinstance(client, InMemoryChromaClient):
        return (InMemoryNotFoundError,)
    from chromadb.errors import NotFoundError

    return (NotFoundError,)


def get_collection_or_none(client: Any, name: str) -> Any:
    try:
        return client.get_collection(name=name, embedding_function=None)
    except _not_found_errors(client):
        return None


def collection_dimension(collection: Any) -> int | None:
    value = (collection.metadata or {}).get(DIMENSION_KEY)
    return int(value) if isinstance(value, int) else None


def get_or_create_cosine_collection(client: Any, name: str, dimension: int) -> Any:
    """The collection, created with cosine space and its dimension recorded; an existing one with
    another dimension is `InvalidInput`."""
    collection = get_collection_or_none(client, name)
    if collection is None:
        try:
            collection = client.create_collection(
                name=name, configuration={"hnsw": {"space": "cosine"}},
                metadata={DIMENSION_KEY: dimension}, embedding_function=None)
        except Exception:
            collection = get_collection_or_none(client, name)  # lost a creation race: use the winner's
            if collection is None:
                raise
    existing = collection_dimension(collection)
    if existing is not None and existing != dimension:
        raise InvalidInput(f"collection {name!r} has dimension {existing}, not {dimension}",
                           param="dimension", code="dimension_mismatch")
    return collection


# --- the in-memory stub ------------------------------------------------------------------------

class InMemoryNotFoundError(Exception):
    pass


class InMemoryCollection:
    """Chroma's collection semantics in memory: insertion order, upsert keeps a record's place,
    merges metadata (a None value removes a key), exact cosine search."""

    def __init__(self, name: str, metadata: Mapping[str, Any] | None) -> None:
        self.name = name
        self.metadata = dict(metadata or {})
        self._rows: dict[str, tuple[np.ndarray, str | None, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def count(self) -> int:
        return len(self._rows)

    def upsert(self, ids: Sequence[str], embeddings: Any, documents: Sequence[str] | None = None,
               metadatas: Sequence[Mapping[str, Any] | None] | None = None) -> None:
        matrix = np.asarray(embeddings, dtype=np.float32)
        width = self.metadata.get(DIMENSION_KEY)
        if width is not None and matrix.shape[1] != width:
            raise ValueError(f"Collection expecting embedding with dimension of {width}, got {matrix.shape[1]}")
        with self._lock:
            for i, item in enumerate(ids):
                old_doc, old_meta = self._rows.get(item, (None, None, {}))[1:]
                meta = dict(old_meta)
                for key, value in ((metadatas[i] if metadatas else None) or {}).items():
                    if value is None:
                        meta.pop(key, None)
                    else:
                        meta[key] = value
                doc = documents[i] if documents is not None else old_doc
                self._rows[item] = (matrix[i].copy(), doc, meta)

    def _select(self, ids: Sequence[str] | None, where: Mapping[str, Any] | None) -> list[str]:
        node = parse_where(where)
        wanted = set(ids) if ids is not None else None
        return [key for key, (_, _, meta) in self._rows.items()
                if (wanted is None or key in wanted) and matches(node, meta)]

    def get(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None,
            limit: int | None = None, offset: int | None = None, include: Sequence[str] = ()) -> dict[str, Any]:
        with self._lock:
            keys = self._select(ids, where)
            start = offset or 0
            keys = keys[start:] if limit is None else keys[start:start + limit]
            rows = [self._rows[k] for k in keys]
        return {"ids": keys,
                "documents": [r[1] for r in rows] if "documents" in include else None,
                "metadatas": [dict(r[2]) or None for r in rows] if "metadatas" in include else None,
                "embeddings": [r[0].copy() for r in rows] if "embeddings" in include else None}

    def query(self, query_embeddings: Any, n_results: int, where: Mapping[str, Any] | None = None,
              include: Sequence[str] = ()) -> dict[str, Any]:
        query = np.asarray(query_embeddings, dtype=np.float32)[0]
        with self._lock:
            keys = self._select(None, where)
            rows = [self._rows[k] for k in keys]
        if not rows:
            return {"ids": [[]], "documents": [[]], "metadatas": [[]], "distances": [[]]}
        matrix = np.stack([r[0] for r in rows])
        norms = np.linalg.norm(matrix, axis=1) * float(np.linalg.norm(query))
        distances = 1.0 - (matrix @ query) / np.where(norms == 0, 1.0, norms)
        order = np.argsort(distances, kind="stable")[:n_results]
        return {"ids": [[keys[i] for i in order]],
                "documents": [[rows[i][1] for i in order]] if "documents" in include else None,
                "metadatas": [[dict(rows[i][2]) or None for i in order]] if "metadatas" in include else None,
                "distances": [[float(distances[i]) for i in order]] if "distances" in include else None}

    def delete(self, ids: Sequence[str] | None = None, where: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            for key in self._select(ids, where):
                del self._rows[key]


class InMemoryChromaClient:
    """The subset of chromadb's client API that our helpers and `ChromaVectorStore` use."""

    def __init__(self) -> None:
        self._collections: dict[str, InMemoryCollection] = {}
        self._lock = threading.Lock()

    def get_collection(self, name: str, embedding_function: Any = None) -> InMemoryCollection:  # noqa: ARG002
        with self._lock:
            if name not in self._collections:
                raise InMemoryNotFoundError(f"Collection [{name}] does not exist")
            return self._collections[name]

    def create_collection(self, name: str, configuration: Any = None,  # noqa: ARG002
                          metadata: Mapping[str, Any] | None = None,
                          embedding_function: Any = None) -> InMemoryCollection:  # noqa: ARG002
        with self._lock:
            if name in self._collections:
                raise ValueError(f"Collection [{name}] already exists")
            collection = self._collections[name] = InMemoryCollection(name, metadata)
            return collection

    def delete_collection(self, name: str) -> None:
        with self._lock:
            if self._collections.pop(name, None) is None:
                raise InMemoryNotFoundError(f"Collection [{name}] does not exist")

    def list_collections(self) -> list[InMemoryCollection]:
        with self._lock:
            return list(self._collections.values())

    def get_max_batch_size(self) -> int:
        return STUB_MAX_BATCH

    def close(self) -> None:
        with self._lock:
            self._collections.clear()
