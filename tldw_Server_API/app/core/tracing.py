"""OpenTelemetry tracing: spans for requests, the embedding cache, the micro-batcher's queue wait
and inference, provider calls and each pipeline stage. With `OTEL_EXPORTER_OTLP_ENDPOINT` set the
server (and every worker process) exports them over OTLP; unset, the API's no-op tracer makes
every span free. A job's messages carry the creating request's W3C `traceparent` (its
`trace_id` field), so a stage run by another task or another process joins that request's trace.

`span(name, **attributes)` is the one way code opens a span; `traceparent()` reads the current
one for a message; `stage_span(name, traceparent, ...)` opens one under a carried parent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, Span, SpanContext, TraceFlags

_TRACER_NAME = "tldw_server.embeddings"
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_installed = False


def configure_tracing(endpoint: str | None, service_name: str = "tldw-embeddings") -> bool:
    """Export spans over OTLP (gRPC) to `endpoint`; nothing (no-op spans) when it is None. Once
    per process; True when a provider was installed."""
    global _installed
    if not endpoint or _installed:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _installed = True
    return True


def tracer() -> trace.Tracer:
    return trace.get_tracer(_TRACER_NAME)


def recording() -> bool:
    """Whether a tracer provider is installed (`configure_tracing`, or a test's own). Without one
    `span` and `record_span` skip the API's no-op spans too: each would cost a context attach and
    detach (~10-20 us), and the request path opens several."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """A span under the current one (a no-op unless tracing is configured)."""
    if not recording():
        yield INVALID_SPAN
        return
    with tracer().start_as_current_span(name, attributes=_clean(attributes)) as current:
        yield current


def traceparent() -> str | None:
    """The W3C traceparent of the current span (None outside a recording span)."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


@contextmanager
def stage_span(name: str, parent: str | None, **attributes: Any) -> Iterator[Span]:
    """A span whose parent is a carried traceparent (a pipeline message's), else a new root."""
    match = _TRACEPARENT.match(parent or "")
    context = None
    if match:
        remote = SpanContext(trace_id=int(match[1], 16), span_id=int(match[2], 16), is_remote=True,
                             trace_flags=TraceFlags(int(match[3], 16)))
        context = trace.set_span_in_context(NonRecordingSpan(remote))
    with tracer().start_as_current_span(name, context=context, attributes=_clean(attributes)) as current:
        yield current


def record_span(name: str, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A finished span of a phase measured elsewhere (a batcher's queue wait and its pass), under
    the current span."""
    if not recording():
        return
    tracer().start_span(name, start_time=start_ns, attributes=_clean(attributes)).end(end_time=end_ns)


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if isinstance(v, str | bool | int | float)}
