"""Kafka mode: consume `ledger.entries.v1` into the projector (consumer group `ledger-projector`).

Offsets are committed only after the batch's rows are inserted, so a crash re-delivers at most the
uncommitted batch, which the projector drops as duplicates. Entries of one account arrive in order
(one partition per account); across partitions they interleave, which the projector's dedup and
every query (keyed by account and engine timestamp) are indifferent to.

An event that cannot be parsed or projected stops the consumer with an error rather than being
skipped: a skipped event would leave the read model silently wrong (the chain verification would
report the gap, but only later). Fix or remove the event, then restart.
"""

from __future__ import annotations

import threading

from confluent_kafka import Consumer, KafkaError

from facade.settings import ClickHouseSettings, KafkaSettings
from ledger_events.gen.ledger.v1 import entries_pb2
from ledger_events.records import CONTENT_TYPE_HEADER, RecordDecodeError, decode_value, header_value
from projections.projector import Projector

BATCH_MESSAGES_MAX = 8189
"""Messages per consume call: at most one insert's worth (Projector's BATCH_ENTRIES_MAX is twice this)."""
POLL_TIMEOUT_SECONDS = 0.05


class ConsumeError(RuntimeError):
    """Kafka reported an error for a message, or a message is not a projectable LedgerEntry."""


def consumer_config(kafka: KafkaSettings, clickhouse: ClickHouseSettings) -> dict[str, object]:
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": clickhouse.consumer_group,
        "client.id": f"{kafka.client_id}-projector",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }


class KafkaProjector:
    """Consumes entries into a Projector; one thread (Kafka consumers are not thread-safe)."""

    def __init__(
        self, projector: Projector, kafka: KafkaSettings, clickhouse: ClickHouseSettings, topic: str | None = None
    ) -> None:
        assert kafka.bootstrap_servers, "Kafka is not configured"
        self._projector = projector
        self._consumer = Consumer(consumer_config(kafka, clickhouse))
        self._consumer.subscribe([topic or kafka.entries_topic])
        self.consumed = 0

    def run_once(self, timeout_seconds: float = POLL_TIMEOUT_SECONDS) -> int:
        """Consumes one batch, projects it, then commits its offsets; returns how many messages."""
        messages = self._consumer.consume(num_messages=BATCH_MESSAGES_MAX, timeout=timeout_seconds)
        if not messages:
            return 0
        entries: list[entries_pb2.LedgerEntry] = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise ConsumeError(str(error))
            value = message.value()
            if value is None:
                raise ConsumeError(f"{message.topic()}[{message.partition()}]@{message.offset()}: empty message")
            content_type = header_value(message.headers(), CONTENT_TYPE_HEADER)
            try:
                entries.append(decode_value(entries_pb2.LedgerEntry, value, content_type))
            except RecordDecodeError as error:  # Any undecodable payload stops us: nothing is skipped.
                where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
                raise ConsumeError(f"{where}: {error}") from error
        self._projector.project(entries)
        self._consumer.commit(asynchronous=False)
        self.consumed += len(entries)
        return len(messages)

    @property
    def partitions_assigned(self) -> int:
        return len(self._consumer.assignment())

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.run_once()

    def close(self) -> None:
        self._consumer.close()
