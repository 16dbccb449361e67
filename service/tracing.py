"""OpenTelemetry: one tracer, exporter set up by the entry points, context carried across the queue.

Span names and attributes carry operation names, statuses and request ids (random UUIDs chosen
by the controller), never an identity, a subject hash or record text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import context, propagate, trace

tracer = trace.get_tracer("lethe")


def setup(service_name: str) -> None:
    """Export spans over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; otherwise stay a no-op."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers, to travel inside a job's arguments."""
    out: dict[str, str] = {}
    propagate.inject(out)
    return out


def record_span(name: str, headers: Mapping[str, str], start_ns: int, *, error: bool = False) -> None:
    """A span that started at ``start_ns`` and ends now, under the context carried in ``headers``
    (for work done on another thread on a request's behalf)."""
    span = tracer.start_span(name, context=propagate.extract(dict(headers)), start_time=start_ns)
    if error:
        span.set_status(trace.StatusCode.ERROR)
    span.end()


def attach(headers: Mapping[str, str] | None) -> object:
    """Make a carried trace context current; returns a token for ``detach``."""
    return context.attach(propagate.extract(dict(headers or {})))


def detach(token: object) -> None:
    context.detach(token)  # type: ignore[arg-type]


def annotate(attributes: Mapping[str, str | int]) -> None:
    """Attributes on the current span (ids and counts only)."""
    trace.get_current_span().set_attributes(dict(attributes))
