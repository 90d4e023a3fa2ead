"""One way to hand a record to a confluent-kafka producer, for every producer of the service.

`Producer.produce` raises BufferError when the local queue is full (`queue.buffering.max.messages`):
the broker is slower than we produce. The remedy is to serve delivery reports (`poll`) until there is
room, but not forever: a broker that stays away must fail the batch (change capture keeps its
checkpoint, ingestion rewinds) rather than hang the caller's thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer

__all__ = ["QUEUE_FULL_POLL_SECONDS", "QUEUE_FULL_RETRIES_MAX", "ProducerQueueFullError", "Record", "produce"]

QUEUE_FULL_POLL_SECONDS = 0.05
QUEUE_FULL_RETRIES_MAX = 1200
"""Queue-full retries per record: ~60 s of serving delivery reports (longer than the default delivery
timeout's share of a batch) before the record is refused."""

Header = tuple[str, str | bytes | None]


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: bytes | str | None
    value: bytes
    headers: Sequence[Header] = ()


class ProducerQueueFullError(RuntimeError):
    """The producer's local queue stayed full for QUEUE_FULL_RETRIES_MAX polls: nothing was queued."""


def produce(
    producer: Producer,
    record: Record,
    on_delivery: Callable[[KafkaError | None, Message], None],
    *,
    retries_max: int = QUEUE_FULL_RETRIES_MAX,
) -> None:
    """Queues one record; while the queue is full, serves delivery reports and tries again, at most
    `retries_max` times (then ProducerQueueFullError: the record was not queued)."""
    assert 0 < retries_max <= QUEUE_FULL_RETRIES_MAX
    headers = list(record.headers)
    for _ in range(retries_max):
        try:
            producer.produce(record.topic, key=record.key, value=record.value, headers=headers, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(QUEUE_FULL_POLL_SECONDS)
    raise ProducerQueueFullError(f"{record.topic}: the producer queue stayed full for {retries_max} polls")
