"""Publishes LedgerEntry events to `ledger.entries.v1`: the EntrySink for change capture. Values and
headers: ledger_events/records.py.

Producer: idempotent (enable.idempotence: no duplicates or reordering from internal retries), acks=all
(every in-sync replica has the record before it counts as delivered). Key: the entry's account id, so
each account's entries stay on one partition, in commit order. `publish` returns only when every
record of the batch is delivered, so change capture checkpoints only what Kafka has durably accepted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from confluent_kafka import KafkaError, Message, Producer

from facade.kafka.producing import Record, produce
from facade.kafka.registry import value_serializer
from facade.kafka.topics import TopicHealth
from facade.observability import metrics
from facade.settings import KafkaSettings
from ledger_events.gen.ledger.v1 import entries_pb2
from ledger_events.records import ValueEncoding, cloud_event_headers


class PublishError(RuntimeError):
    """Kafka did not acknowledge every record of a batch; nothing may be checkpointed."""


def producer_config(settings: KafkaSettings) -> dict[str, object]:
    return {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": f"{settings.client_id}-entries",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "delivery.timeout.ms": settings.delivery_timeout_ms,
        "queue.buffering.max.messages": 200_000,
    }


class KafkaEntryPublisher:
    def __init__(self, settings: KafkaSettings, topic: str | None = None, health: TopicHealth | None = None) -> None:
        assert settings.bootstrap_servers, "Kafka is not configured"
        self._producer = Producer(producer_config(settings))
        self._topic = topic or settings.entries_topic
        self._flush_timeout_seconds = settings.delivery_timeout_ms / 1000 + 5
        self._health = health
        self._encoding = ValueEncoding(settings.entries_encoding)
        self._serialize = value_serializer(
            settings, message_type=entries_pb2.LedgerEntry, topic=self._topic, encoding=self._encoding
        )
        self._source = settings.client_id
        """Told each batch's outcome, so readiness detail says when entries are undeliverable."""

    async def publish(self, entries: Sequence[entries_pb2.LedgerEntry]) -> None:
        await asyncio.to_thread(self._publish_blocking, entries)

    def _publish_blocking(self, entries: Sequence[entries_pb2.LedgerEntry]) -> None:
        errors: list[str] = []

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                errors.append(f"{message.key()!r}: {error}")

        for entry in entries:
            headers = cloud_event_headers(
                entry,
                event_id=entry.event_id,
                time_ns=entry.engine_timestamp,
                source=self._source,
                encoding=self._encoding,
            )
            record = Record(self._topic, entry.account_id.encode(), self._serialize(entry), headers)
            produce(self._producer, record, on_delivery)
        remaining = self._producer.flush(self._flush_timeout_seconds)
        if remaining or errors:
            metrics.kafka_producer_errors_total.labels(self._topic).inc(len(errors) + remaining)
            reason = f"{remaining} records undelivered, {len(errors)} failed: {errors[:3]}"
            if self._health is not None:
                self._health.failed(f"{self._topic}: {reason}")
            raise PublishError(reason)
        if self._health is not None:
            self._health.delivered()

    def close(self) -> None:
        self._producer.flush(self._flush_timeout_seconds)
