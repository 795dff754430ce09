"""The stage workers' shared module: today it re-exports the stage context (`stage_context.py`);
the delivery loop of the scale-out pipeline (ack, retry, dead-letter, reclaim, heartbeat, drain)
will live here, once, for every stage. Workers import this package's modules, never each other.
"""

from tldw_Server_API.app.core.Embeddings.stage_context import Embedded, Embedder, StageContext, media_collection

__all__ = ["Embedded", "Embedder", "StageContext", "media_collection"]
