"""Prometheus metrics of the Embeddings module (requests, tokens, inputs, provider latency, cache
hits/misses, retries, fallbacks, policy denials, breaker states, dimension adjustments), registered
in the app's registry, plus a JSON snapshot of the same counters for the admin metrics route.
Labels use resolved catalog names only, never caller-supplied strings, so cardinality stays bounded.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def _total(counter: Counter) -> float:
    return sum(s.value for metric in counter.collect() for s in metric.samples if s.name.endswith("_total"))


def _by_label(counter: Counter, label: str, **only: str) -> dict[str, float]:
    """Totals of a counter grouped by one label, over the samples whose other labels match `only`."""
    out: dict[str, float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and all(sample.labels.get(k) == v for k, v in only.items()):
                key = sample.labels.get(label, "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


class EmbeddingsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.api_requests = Counter(
            "embeddings_api_requests_total", "POST /embeddings requests by outcome (ok or the error code)",
            ["outcome"], registry=registry,
        )
        self.requests = Counter(
            "embeddings_requests_total", "Embedding provider calls by provider, model and outcome",
            ["provider", "model", "outcome"], registry=registry,
        )
        self.tokens = Counter("embeddings_tokens_total", "Tokens embedded", ["provider", "model"], registry=registry)
        self.inputs = Counter("embeddings_inputs_total", "Inputs embedded", ["provider", "model"], registry=registry)
        self.provider_latency = Histogram(
            "embeddings_provider_seconds", "Time spent in the provider per call",
            ["provider", "model"], registry=registry,
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.dimension_adjustments = Counter(
            "embeddings_dimension_adjustments_total", "Responses whose width the dimension policy changed",
            ["policy"], registry=registry,
        )
        self.cache_hits = Counter("embeddings_cache_hits_total", "Inputs answered from the cache", registry=registry)
        self.cache_misses = Counter("embeddings_cache_misses_total", "Inputs the cache did not hold",
                                    registry=registry)
        self.retries = Counter("embeddings_retries_total", "Provider calls retried", ["provider"], registry=registry)
        self.fallbacks = Counter(
            "embeddings_fallbacks_total", "Requests handed from a failing provider to the next in its chain",
            ["from_provider"], registry=registry,
        )
        self.policy_denials = Counter(
            "embeddings_policy_denials_total", "Requests refused by the provider/model policy",
            ["provider"], registry=registry,
        )
        self.breaker_state = Gauge(
            "embeddings_circuit_breaker_state", "Circuit breaker state (0 closed, 1 half-open, 2 open)",
            ["provider"], registry=registry,
        )
        self.rate_limited = Counter("embeddings_rate_limited_total", "Requests refused by rate limits",
                                    registry=registry)

    def record_success(self, provider: str, model: str, inputs: int, tokens: int, seconds: float) -> None:
        self.requests.labels(provider, model, "success").inc()
        self.tokens.labels(provider, model).inc(tokens)
        self.inputs.labels(provider, model).inc(inputs)
        self.provider_latency.labels(provider, model).observe(seconds)

    def record_failure(self, provider: str, model: str) -> None:
        self.requests.labels(provider, model, "error").inc()

    def record_cache(self, hits: int, misses: int) -> None:
        if hits:
            self.cache_hits.inc(hits)
        if misses:
            self.cache_misses.inc(misses)

    def on_breaker_change(self, provider: str, _old: str, new: str) -> None:
        self.breaker_state.labels(provider).set(BREAKER_STATES.get(new, 0))

    def snapshot(self) -> dict[str, Any]:
        """The admin route's JSON counters (totals since start)."""
        outcomes = _by_label(self.requests, "outcome")
        return {
            "requests": _total(self.api_requests),
            "requests_by_outcome": _by_label(self.api_requests, "outcome"),
            "provider_calls": outcomes.get("success", 0.0) + outcomes.get("error", 0.0),
            "provider_failures": outcomes.get("error", 0.0),
            "provider_failures_by_provider": {
                k: v for k, v in _by_label(self.requests, "provider", outcome="error").items() if v
            },
            "tokens": _total(self.tokens),
            "inputs": _total(self.inputs),
            "retries": _total(self.retries),
            "fallbacks": _total(self.fallbacks),
            "policy_denials": _total(self.policy_denials),
            "rate_limited": _total(self.rate_limited),
            "dimension_adjustments": _total(self.dimension_adjustments),
            "cache_hits": _total(self.cache_hits),
            "cache_misses": _total(self.cache_misses),
        }
