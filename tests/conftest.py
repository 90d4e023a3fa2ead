"""Project-wide pytest plugins: the real Kafka broker fixtures, and an in-memory span exporter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

pytest_plugins = ["tests.kafka_fixtures", "tests.postgres_fixtures"]

_exporter: InMemorySpanExporter | None = None


@pytest.fixture
def span_exporter() -> Iterator[InMemorySpanExporter]:
    """Finished spans of this test. OpenTelemetry allows one global tracer provider per process, so
    the first test that asks installs it (through the service's own configure_tracing) for the rest."""
    global _exporter  # noqa: PLW0603 - the one provider a process may install.
    if _exporter is None:
        from facade.observability.tracing import configure_tracing

        _exporter = InMemorySpanExporter()
        configure_tracing("ledger-test", exporter=_exporter)
    _exporter.clear()
    yield _exporter
    _exporter.clear()
