"""Examples for the OpenAPI schema, in one table: a request body example for every body model, an
example for every path parameter, and the bodies of the two routes that read their body by hand
(`POST /media/add`: multipart or JSON; `POST /files`: multipart). `install_examples(app)` merges
them into the generated schema once, so `/docs` shows a filled-in "Try it out" for every route;
`tests/app/api/test_docs.py` fails when a body model or path parameter has none.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BODY_EXAMPLES: dict[str, dict[str, Any]] = {
    "EmbeddingRequest": {"model": MODEL, "input": ["The river runs to the sea.", "A second text"]},
    "ModelRequest": {"model": f"onnx:{MODEL}@int8"},
    "VectorStoreCreateRequest": {"name": "support-docs", "metadata": {"team": "support"}},
    "CreateFromMediaRequest": {"media_ids": [1, 2], "name": "my-papers"},
    "VectorStoreModifyRequest": {"name": "support-docs-2025", "metadata": {"team": "support"}},
    "UpsertVectorsRequest": {"records": [{"id": "faq-1", "content": "Reset the device by holding the button.",
                                          "metadata": {"lang": "en"}}]},
    "QueryRequest": {"query": "how do I reset it?", "top_k": 5, "filter": {"lang": "en"}},
    "SearchRequest": {"query": "how do I reset it?", "max_num_results": 5,
                      "filters": {"type": "eq", "key": "lang", "value": "en"}},
    "MediaUpdateJSON": {"content": "The edited text of the note.", "title": "Notes"},
    "EmbeddingOptionsModel": {"chunk_method": "tokens", "priority": "high"},
    "BatchRequest": {"media_ids": [1, 2, 3]},
    "MediaSearchRequest": {"query": "volcanoes", "top_k": 5},
    "RequeueRequest": {"ids": ["1733400000000-0"]},
    "DeadLetterState": {"state": "approved_for_requeue", "note": "the provider key was rotated"},
    "PriorityRequest": {"priority": "high"},
    "ReembedRequest": {"user_id": "alice", "embedding_model": f"onnx:{MODEL}@fp32"},
    "AttachFileRequest": {"file_id": "file-0123456789abcdef01234567", "attributes": {"season": "autumn"},
                          "chunking_strategy": {"type": "static", "static": {"max_chunk_size_tokens": 200,
                                                                             "chunk_overlap_tokens": 20}}},
    "FileBatchRequest": {"file_ids": ["file-0123456789abcdef01234567", "file-89abcdef0123456789abcdef"]},
    "RAGSearchRequest": {"query": "what did I write about volcanoes?", "mode": "hybrid", "top_k": 5},
}
PATH_EXAMPLES: dict[str, Any] = {
    "media_id": 1, "job_id": "job_0123456789abcdef0123456789abcdef", "model_id": MODEL, "provider": "openai",
    "stage": "embedding", "action": "pause", "letter_id": "1733400000000-0", "key": "3f5a0c9e1b2d4f6a8c0e",
    "vector_store_id": "vs_0123456789abcdef0123456789abcdef", "vector_id": "faq-1",
    "batch_id": "vsb_0123456789abcdef0123456789abcdef", "file_id": "file-0123456789abcdef01234567",
}
_MULTIPART_FILE = {"type": "string", "format": "binary"}
HAND_READ_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("/api/v1/media/add", "post"): {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": _MULTIPART_FILE, "title": {"type": "string"}, "generate_embeddings": {"type": "boolean"},
            "embedding_model": {"type": "string"}, "chunk_method": {"type": "string"}}}},
        "application/json": {"schema": {"type": "object", "required": ["content"], "properties": {
            "title": {"type": "string"}, "content": {"type": "string"}, "generate_embeddings": {"type": "boolean"}}},
            "example": {"title": "Notes", "content": "Volcanoes erupt when magma rises.", "generate_embeddings": True}},
    }},
    ("/api/v1/files", "post"): {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file", "purpose"], "properties": {
            "file": _MULTIPART_FILE, "purpose": {"type": "string", "example": "assistants"}}}},
    }},
}


def add_examples(spec: dict[str, Any]) -> dict[str, Any]:
    """The schema with the table's examples merged in (pure: the same spec object, mutated)."""
    schemas = spec.get("components", {}).get("schemas", {})
    for name, example in BODY_EXAMPLES.items():
        if name in schemas:
            schemas[name]["examples"] = [example]
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter["name"] in PATH_EXAMPLES:
                    parameter["example"] = PATH_EXAMPLES[parameter["name"]]
            body = HAND_READ_BODIES.get((path, method))
            if body is not None and "requestBody" not in operation:
                operation["requestBody"] = body
    return spec


def install_examples(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_examples(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
