"""Host retrieval: vector-store adapters and vector/FTS/hybrid search. Not built yet."""
