"""tldw_Server_API: a small RAG host (auth, media, chunking, RAG search) and its Embeddings module."""
