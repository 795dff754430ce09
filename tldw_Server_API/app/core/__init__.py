"""Core services and pure logic. Nothing under core/ imports FastAPI or Starlette."""
