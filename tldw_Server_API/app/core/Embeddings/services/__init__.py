"""Background services of the Embeddings module (re-embed, vector compaction). Not built yet."""
