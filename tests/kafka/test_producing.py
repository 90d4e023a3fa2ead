"""The one produce helper: a full local queue is waited out by serving delivery reports, but only so
long; then the record is refused with a clear error instead of hanging the producing thread."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, Message, Producer

from facade.kafka.producing import ProducerQueueFullError, Record, produce
from ledger_testkit.ports import free_port


def test_a_queue_that_stays_full_refuses_the_record_after_the_bound() -> None:
    # No broker listens there: nothing is ever delivered, so the one-record queue stays full.
    producer = Producer(
        {
            "bootstrap.servers": f"127.0.0.1:{free_port()}",
            "queue.buffering.max.messages": 1,
            "message.timeout.ms": 600_000,
            "log_level": 0,
        }
    )
    reports: list[KafkaError | None] = []

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        reports.append(error)

    produce(producer, Record("ledger.test", b"k", b"first"), on_delivery, retries_max=3)
    assert len(producer) == 1  # Queued, undelivered.
    with pytest.raises(ProducerQueueFullError, match="stayed full for 3 polls"):
        produce(producer, Record("ledger.test", b"k", b"second", [("h", b"v")]), on_delivery, retries_max=3)
    assert len(producer) == 1  # The refused record was not queued.
    assert reports == []
    producer.purge()
    producer.flush(1)
