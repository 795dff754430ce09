"""Fixtures of the Files tests: `jobs_db_url` (a fresh SQLite or PostgreSQL database per test),
re-exported from the Embeddings tests' conftest so both folders share one definition."""

from app.core.Embeddings.conftest import jobs_db_url

__all__ = ["jobs_db_url"]
