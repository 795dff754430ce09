"""Host media: the application service behind `/api/v1/media` (add, read, list, delete)."""
