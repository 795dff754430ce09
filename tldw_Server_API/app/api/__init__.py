"""HTTP layer: routers, wire schemas, middleware and the one error-translation table."""
