"""OpenTelemetry tracing: a span per RPC and per engine batch, context carried across processes.

Off by default (no exporter, near-zero cost); `configure_tracing(otlp_endpoint=...)` exports over
OTLP/gRPC, and tests pass their own exporter (e.g. InMemorySpanExporter). Context crosses process
boundaries as W3C `traceparent`: in gRPC metadata and in Kafka record headers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

TRACER_NAME = "ledger"


def configure_tracing(
    service_name: str = "ledger-service",
    otlp_endpoint: str = "",
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    trace.set_tracer_provider(provider)
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def tracing_configured() -> bool:
    """Whether a tracer provider was set (configure_tracing, or a test's own). Until one is, every span is
    a non-recording no-op: a hot path (an engine batch) may skip making one (~10 µs of CPU each). Once set,
    a provider stays (OpenTelemetry sets it once), so that answer is remembered: asking costs an
    environment lookup (~1-2 µs) otherwise."""
    global _configured  # noqa: PLW0603  A latch: once a provider is set it never goes.
    if not _configured:
        _configured = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    return _configured


_configured = False


def inject_headers(context: otel_context.Context | None = None) -> list[tuple[str, str | bytes | None]]:
    """The trace context (default: the current one) as Kafka headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return [(key, value.encode()) for key, value in carrier.items()]


def extract_headers(headers: Sequence[tuple[str, bytes | str | None]] | None) -> otel_context.Context:
    """The trace context carried by Kafka headers (or gRPC metadata pairs)."""
    carrier: dict[str, str] = {}
    for key, value in headers or ():
        if value is None:
            continue
        carrier[key.lower()] = value.decode() if isinstance(value, bytes) else value
    return propagate.extract(carrier)


def inject_metadata() -> list[tuple[str, str]]:
    """The current trace context as gRPC metadata (for outgoing calls)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return list(carrier.items())


def extract_metadata(
    metadata: Iterable[tuple[str, str | bytes]] | Mapping[str, str] | None,
) -> otel_context.Context:
    pairs = list(metadata.items()) if isinstance(metadata, Mapping) else list(metadata or ())
    return extract_headers(pairs)
