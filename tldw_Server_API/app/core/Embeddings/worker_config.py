"""The Redis Streams pipeline's names and settings, one place for workers, the executor, the
orchestrator and admin routes: `embeddings:{stage}` (normal priority), `embeddings:{stage}:high`
and `:low`, consumer group `{stage}-workers`, dead letters `embeddings:{stage}:dlq`, the delayed
retry set `embeddings:{stage}:delayed`, heartbeats `embeddings:workers:{consumer}`, the operator's
stage flags `embeddings:{stage}:paused` and `:draining`, breaker resets
`embeddings:control:breaker_resets`. Every key carries the deployment's prefix. Pure: no Redis
calls.
"""

from __future__ import annotations

from dataclasses import dataclass

from tldw_Server_API.app.core.config import PipelineConfig
from tldw_Server_API.app.core.Embeddings.dlq_crypto import DLQCrypto
from tldw_Server_API.app.core.Embeddings.request_signing import MessageSigner

STAGES = ("chunking", "embedding", "storage")
PRIORITIES = ("high", "normal", "low")
# Reads per cycle by priority (weighted round robin: high is read first most often, low never starves).
PRIORITY_WEIGHTS = {"high": 4, "normal": 2, "low": 1}
# What an operator does to a stage: pause (workers take nothing new; messages wait), drain (work
# until the stage has nothing waiting, then stop: Redis workers exit and are not restarted), resume.
STAGE_ACTIONS = ("pause", "drain", "resume")


@dataclass(frozen=True)
class StreamNames:
    prefix: str = ""

    def stream(self, stage: str, priority: str = "normal") -> str:
        base = f"{self.prefix}embeddings:{stage}"
        return base if priority == "normal" else f"{base}:{priority}"

    def streams(self, stage: str) -> list[str]:
        return [self.stream(stage, p) for p in PRIORITIES]

    def group(self, stage: str) -> str:
        return f"{stage}-workers"

    def dlq(self, stage: str) -> str:
        return f"{self.prefix}embeddings:{stage}:dlq"

    def dlq_index(self, stage: str) -> str:
        return f"{self.prefix}embeddings:{stage}:dlq:index"

    def delayed(self, stage: str) -> str:
        return f"{self.prefix}embeddings:{stage}:delayed"

    def paused(self, stage: str) -> str:
        return f"{self.prefix}embeddings:{stage}:paused"

    def draining(self, stage: str) -> str:
        return f"{self.prefix}embeddings:{stage}:draining"

    def heartbeat(self, consumer: str) -> str:
        return f"{self.prefix}embeddings:workers:{consumer}"

    def heartbeat_pattern(self) -> str:
        return f"{self.prefix}embeddings:workers:*"

    def stats(self, stage: str) -> str:
        return f"{self.prefix}embeddings:{stage}:stats"

    def breaker_resets(self) -> str:
        """provider -> a counter an operator's breaker reset bumps; every worker resets on a change."""
        return f"{self.prefix}embeddings:control:breaker_resets"


def signer_of(config: PipelineConfig) -> MessageSigner | None:
    return MessageSigner.from_setting(config.signing_secret, config.signing_max_age_seconds)


def crypto_of(config: PipelineConfig) -> DLQCrypto | None:
    return DLQCrypto.from_setting(config.dlq_encryption_key)


@dataclass(frozen=True)
class WorkerConfig:
    """One worker process: its stages, its lease and retry rules (its Redis client is given)."""

    names: StreamNames
    stages: tuple[str, ...] = STAGES
    lease_seconds: float = 30.0
    max_retries: int = 3            # transient failures retried (delayed set) before dead-lettering
    max_deliveries: int = 5         # deliveries of one entry (crashes mid-handler) before dead-lettering
    block_ms: int = 500
    retry_base: float = 0.5
    retry_cap: float = 30.0
    burst: bool = False             # exit once every stage's streams are empty
    signer: MessageSigner | None = None   # sign what it sends, verify what it reads
    crypto: DLQCrypto | None = None       # encrypt dead-letter payloads

    @classmethod
    def from_pipeline(cls, config: PipelineConfig, stages: tuple[str, ...] = STAGES, *,
                      burst: bool = False) -> WorkerConfig:
        return cls(names=StreamNames(config.prefix), stages=stages,
                   lease_seconds=config.lease_seconds, max_retries=config.max_retries,
                   max_deliveries=config.max_retries + 2, burst=burst, signer=signer_of(config),
                   crypto=crypto_of(config))
