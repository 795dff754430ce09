"""OpenAI-compatible Files API storage: file records in SQL, content-addressed blobs on disk."""
