"""The ASGI application: `main.create_app` builds it; `core/` holds the logic, `api/` the HTTP layer."""
