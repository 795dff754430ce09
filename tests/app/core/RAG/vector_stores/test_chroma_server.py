"""Chroma in client/server mode (`RAG__CHROMA__URL`) beyond the shared contract: each user is a
database of its own on the server, a server out of reach is a 503 (`ServiceUnavailable`) for
every call and for the health probe, and the Redis pipeline accepts a Chroma server as shared
state while it refuses embedded Chroma with a clear message."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from support import free_port, make_settings

from tldw_Server_API.app.core.errors import ServiceUnavailable
from tldw_Server_API.app.core.RAG.vector_stores.factory import create_vector_store_factory
from tldw_Server_API.app.core.services import check_shared_state


def test_each_user_is_a_database_of_its_own(tmp_path: Path, chroma_server_url: str) -> None:
    import chromadb
    from chromadb.config import DEFAULT_TENANT

    factory = create_vector_store_factory(make_settings(tmp_path, rag={"chroma": {"url": chroma_server_url}})
                                          .storage_config())
    alice, bob = f"a{uuid.uuid4().hex[:10]}", f"b{uuid.uuid4().hex[:10]}"
    try:
        assert factory.kind == "chroma-server"
        factory.probe()
        for user in (alice, bob):
            store = factory.for_user(user)
            store.ensure_collection("media", 2)
            store.upsert("media", ["x"], [[1.0, 0.0]], [f"{user}'s"], [{"media_id": 1}])
        admin = chromadb.AdminClient(factory.clients._server_settings())   # noqa: SLF001 - the server's view
        for user in (alice, bob):
            assert admin.get_database(f"tldw_{user}", tenant=DEFAULT_TENANT)["name"] == f"tldw_{user}"
        (hit,) = factory.for_user(bob).query("media", [1.0, 0.0], 5)
        assert hit.document == f"{bob}'s"
    finally:
        for user in (alice, bob):
            factory.for_user(user).delete_collection("media")
        factory.close()


def test_a_server_out_of_reach_is_service_unavailable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"    # nothing listens there
    factory = create_vector_store_factory(make_settings(tmp_path, rag={"chroma": {"url": url}}).storage_config())
    try:
        with pytest.raises(ServiceUnavailable):
            factory.for_user("alice").ensure_collection("media", 2)
        with pytest.raises(ServiceUnavailable):
            factory.for_user("alice").query("media", [1.0, 0.0], 5)
        with pytest.raises(Exception):  # noqa: B017, PT011 - the probe raises what the client raises
            factory.probe()
    finally:
        factory.close()


def test_the_redis_pipeline_needs_a_vector_store_every_process_reaches(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="RAG__CHROMA__URL"):
        check_shared_state(make_settings(tmp_path, embeddings_pipeline="redis"))
    check_shared_state(make_settings(tmp_path, embeddings_pipeline="redis",
                                     rag={"chroma": {"url": "http://chroma.internal:8000"}}))
    check_shared_state(make_settings(tmp_path, embeddings_pipeline="redis",
                                     rag={"vector_store_type": "pgvector", "pgvector": {"dsn": "postgresql://x/y"}}))
    with pytest.raises(ValueError, match="RAG__CHROMA__URL"):
        make_settings(tmp_path, rag={"chroma": {"url": "chroma:8000"}})
