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
    with pytest.raises(ProducerQueueFullError, match="stayed full for 3 polls"):
        produce(producer, Record("ledger.test", b"k", b"second", [("h", b"v")]), on_delivery, retries_max=3)
    assert reports == []  # Nothing delivered: no broker.
    # Purging reports every queued record as failed: only the first was ever queued.
    producer.purge()
    producer.flush(5)
    assert len(reports) == 1
    assert reports[0] is not None and reports[0].code() == KafkaError._PURGE_QUEUE
