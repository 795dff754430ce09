"""Version 1 of the HTTP API, mounted under /api/v1."""

# Routers carry this prefix themselves (not via include_router), so each route's own path is the
# full template that logs and metrics report.
API_V1_PREFIX = "/api/v1"
