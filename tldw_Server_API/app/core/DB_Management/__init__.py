"""Host persistence: the per-user media database. Not built yet."""
