"""The Embeddings module: engine (providers), the synchronous embeddings service, storage helpers
and the scale-out pipeline. Imports only core leaves; never the API layer or FastAPI."""
