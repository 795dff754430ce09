"""Thin route modules: parse the request model, call one service method, return the response."""
