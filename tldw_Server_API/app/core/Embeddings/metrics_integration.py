"""Prometheus metrics of the Embeddings module (requests, tokens, inputs, provider latency,
dimension adjustments), registered in the app's registry. Labels use resolved catalog names only,
never caller-supplied strings, so their cardinality stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class EmbeddingsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "embeddings_requests_total", "Embedding requests by provider, model and outcome",
            ["provider", "model", "outcome"], registry=registry,
        )
        self.tokens = Counter(
            "embeddings_tokens_total", "Tokens embedded", ["provider", "model"], registry=registry
        )
        self.inputs = Counter(
            "embeddings_inputs_total", "Inputs embedded", ["provider", "model"], registry=registry
        )
        self.provider_latency = Histogram(
            "embeddings_provider_seconds", "Time spent in the provider per request",
            ["provider", "model"], registry=registry,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.dimension_adjustments = Counter(
            "embeddings_dimension_adjustments_total", "Responses whose width the dimension policy changed",
            ["policy"], registry=registry,
        )

    def record_success(self, provider: str, model: str, inputs: int, tokens: int, seconds: float) -> None:
        self.requests.labels(provider, model, "success").inc()
        self.tokens.labels(provider, model).inc(tokens)
        self.inputs.labels(provider, model).inc(inputs)
        self.provider_latency.labels(provider, model).observe(seconds)

    def record_failure(self, provider: str, model: str) -> None:
        self.requests.labels(provider, model, "error").inc()
