"""Trace context through Kafka on a real broker: a producer's traceparent header → the kafka.ingest span
→ the engine batch that made the commands durable → the traceparent on each result record."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from facade.kafka.ingest import CommandIngestor
from facade.observability.tracing import inject_headers, tracer
from facade.service import LedgerService
from ledger_testkit.kafka_broker import KafkaCluster
from tests.kafka.test_ingestion import (
    INGEST_CLIENT,
    accounts,
    command,
    credit,
    header,
    ingest,
    kafka_settings,
    read,
    service,  # noqa: F401 - the fixture
)

pytestmark = pytest.mark.kafka


async def test_trace_crosses_kafka_ingest_batch_and_results(
    kafka_cluster: KafkaCluster,
    service: LedgerService,  # noqa: F811 - the fixture
    span_exporter: InMemorySpanExporter,
) -> None:
    settings = kafka_settings(kafka_cluster)
    [alice] = await accounts(service, "alice")
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "acks": "all"})
    with tracer().start_as_current_span("upstream.publish") as upstream:
        producer.produce(
            settings.commands_topic, key=alice, value=command("k1", credit(alice, 5)), headers=inject_headers()
        )
    assert producer.flush(30) == 0
    ingestor = CommandIngestor(service, settings, INGEST_CLIENT)
    try:
        await ingest(ingestor, 1)
    finally:
        ingestor.close()

    published = upstream.get_span_context()
    spans = {span.name: span for span in span_exporter.get_finished_spans()}
    ingest_span, batch = spans["kafka.ingest"], spans["engine.batch"]
    assert ingest_span.context is not None and batch.context is not None
    assert ingest_span.context.trace_id == batch.context.trace_id == published.trace_id
    assert ingest_span.parent is not None and ingest_span.parent.span_id == published.span_id
    assert [link.context.span_id for link in ingest_span.links] == [published.span_id]
    assert batch.parent is not None and batch.parent.span_id == ingest_span.context.span_id

    [result] = read(settings, settings.results_topic, 1)
    trace_id, span_id = header(result, "traceparent").split("-")[1:3]
    assert (int(trace_id, 16), int(span_id, 16)) == (published.trace_id, ingest_span.context.span_id)
