"""Pydantic wire models, one module per endpoint module."""
