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
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER_NAME = "ledger"
_W3C = TraceContextTextMapPropagator()
_configured = False
"""Set by configure_tracing (the edges and the group commit ask per call or batch: a module flag is cheaper
than OpenTelemetry's get_tracer_provider(), which looks its environment variable up each time while none is
set)."""


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
    global _configured  # noqa: PLW0603  A process-wide fact, set once (OpenTelemetry takes one provider).
    _configured = True
    return provider


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def tracing_configured() -> bool:
    """Whether configure_tracing installed a tracer provider. Until then every span is a non-recording
    no-op, so a hot path (an RPC, an engine batch) may skip making one (~10 µs of CPU each). A provider set
    some other way (trace.set_tracer_provider) is not seen here: configure_tracing is the service's one way
    to install one (the tests' too, tests/conftest.py)."""
    return _configured


def span_traceparent() -> tuple[str, str]:
    """The current span's W3C traceparent and tracestate, as a front's CALL frame carries them to the
    engine's process (facade.api._frames); two empty strings when there is no valid span. Formatted here
    rather than through a propagator's carrier dict: it runs per forwarded call while tracing is on."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return "", ""
    traceparent = f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
    return traceparent, span_context.trace_state.to_header()


def traceparent_context(traceparent: str, tracestate: str = "") -> otel_context.Context:
    """A context whose current span is the remote one `traceparent` names (a new empty context when it is
    malformed: the call is then traced, if at all, without a parent)."""
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _W3C.extract(carrier, context=otel_context.Context())


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
