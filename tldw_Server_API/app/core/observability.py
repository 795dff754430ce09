"""Host observability: loguru configuration (text or JSON, request id bound per request, no
variable values in tracebacks) and the HTTP request metrics every route reports.

Metrics live in a per-app `CollectorRegistry`, so several apps in one process (tests) never clash.
"""

from __future__ import annotations

import sys

from loguru import logger
from prometheus_client import CollectorRegistry, Counter, Histogram

from tldw_Server_API.app.core.config import LoggingConfig

_TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
    "{extra[request_id]} | {message}"
)


def configure_logging(config: LoggingConfig) -> None:
    """One sink on stderr. `diagnose=False`: tracebacks never print local variables (inputs, keys)."""
    logger.remove()
    logger.configure(extra={"request_id": "-"})
    logger.add(
        sys.stderr, level=config.level, serialize=config.json, format=_TEXT_FORMAT,
        backtrace=False, diagnose=False, enqueue=False,
    )


class HTTPMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_requests_total", "HTTP requests by route template, method and status",
            ["method", "route", "status"], registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency by route template",
            ["method", "route"], registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
