"""Publishes signed checkpoints to `ledger.checkpoints.v1` (settings.kafka.checkpoints_topic).

Value: the signed note itself (text/plain; docs/audit.md), which verifies with the public key alone;
key: the tree size in decimal, so consumers can compact by size. CloudEvents headers as for entries,
with type `ledger.v1.Checkpoint`. `publish` returns once the record is delivered (acks=all).
"""

from __future__ import annotations

import asyncio
import datetime

from confluent_kafka import KafkaError, Message, Producer

from facade.audit.log import SealedCheckpoint
from facade.kafka.entries_publisher import PublishError, producer_config
from facade.kafka.producing import Record, produce
from facade.settings import KafkaSettings

__all__ = ["KafkaCheckpointPublisher"]

CHECKPOINT_TYPE = "ledger.v1.Checkpoint"


class KafkaCheckpointPublisher:
    def __init__(self, settings: KafkaSettings) -> None:
        assert settings.bootstrap_servers, "Kafka is not configured"
        config = producer_config(settings) | {"client.id": f"{settings.client_id}-checkpoints"}
        self._producer = Producer(config)
        self._topic = settings.checkpoints_topic
        self._source = settings.client_id
        self._flush_timeout_seconds = settings.delivery_timeout_ms / 1000 + 5

    async def publish(self, sealed: SealedCheckpoint) -> None:
        await asyncio.to_thread(self._publish_blocking, sealed)

    def _publish_blocking(self, sealed: SealedCheckpoint) -> None:
        errors: list[str] = []

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            del message
            if error is not None:
                errors.append(str(error))

        checkpoint = sealed.checkpoint
        seconds, nanos = divmod(checkpoint.timestamp_last, 1_000_000_000)
        moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        record = Record(
            self._topic,
            key=str(checkpoint.tree_size).encode(),
            value=sealed.note.encode(),
            headers=[
                ("ce_specversion", b"1.0"),
                ("ce_id", f"{checkpoint.origin}/{checkpoint.tree_size}".encode()),
                ("ce_source", f"urn:ledger-service:{self._source}".encode()),
                ("ce_type", CHECKPOINT_TYPE.encode()),
                ("ce_time", f"{moment}.{nanos:09d}Z".encode()),
                ("content-type", b"text/plain; charset=utf-8"),
            ],
        )
        produce(self._producer, record, on_delivery)
        remaining = self._producer.flush(self._flush_timeout_seconds)
        if remaining or errors:
            raise PublishError(f"checkpoint {checkpoint.tree_size}: {remaining} undelivered, errors {errors[:3]}")
