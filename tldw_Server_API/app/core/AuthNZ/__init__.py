"""Host authentication: API keys map to users with roles (`user`, `admin`)."""
