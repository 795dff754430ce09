"""The embedding engine: provider protocol, registry, model resolution and provider adapters."""
