"""The confirmed-entry stream on a real Kafka: order per account, no loss, bounded re-emission."""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from facade.changes.poller import ChangeCapture, Pacing
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, Transfer
from facade.kafka.entries_publisher import KafkaEntryPublisher
from facade.settings import KafkaSettings
from ledger_events.gen.ledger.v1 import entries_pb2
from ledger_testkit.kafka_broker import KafkaCluster
from tests.kafka_fixtures import create_topics, unique_topic

pytestmark = pytest.mark.kafka
CONSUME_TIMEOUT_SECONDS = 60.0
ACCOUNTS = 8


def consume_all(bootstrap: str, topic: str, count: int) -> list[entries_pb2.LedgerEntry]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_topic("test"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    entries: list[entries_pb2.LedgerEntry] = []
    deadline = time.monotonic() + CONSUME_TIMEOUT_SECONDS
    try:
        while len(entries) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            value = message.value()
            assert value is not None
            entry = entries_pb2.LedgerEntry.FromString(value)
            assert message.key() == entry.account_id.encode(), "keyed by account"
            entries.append(entry)
        # Drain briefly: anything beyond `count` would be an unexpected duplicate.
        extra_deadline = time.monotonic() + 1.0
        while time.monotonic() < extra_deadline:
            message = consumer.poll(0.2)
            if message is not None and not message.error() and (value := message.value()) is not None:
                entries.append(entries_pb2.LedgerEntry.FromString(value))
    finally:
        consumer.close()
    return entries


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[EmbeddedEngine]:
    engine = await EmbeddedEngine.open(tmp_path / "engine")
    await engine.create_accounts([Account(id=i, ledger=840, code=1) for i in range(1, ACCOUNTS + 1)])
    yield engine
    await engine.close()


async def write(engine: EmbeddedEngine, first_id: int, count: int) -> None:
    results = await engine.create_transfers(
        [
            Transfer(id=i, debit_account_id=i % ACCOUNTS + 1, credit_account_id=(i + 3) % ACCOUNTS + 1,
                     amount=i, ledger=840, code=1)
            for i in range(first_id, first_id + count)
        ]
    )  # fmt: skip
    assert all(r.status.name == "CREATED" for r in results)


def assert_per_account_order(entries: list[entries_pb2.LedgerEntry]) -> None:
    by_account: dict[str, list[int]] = defaultdict(list)
    for entry in entries:
        by_account[entry.account_id].append(entry.engine_timestamp)
    for timestamps in by_account.values():
        assert timestamps == sorted(timestamps)


async def test_every_confirmed_entry_is_published_in_per_account_order(
    kafka_cluster: KafkaCluster, engine: EmbeddedEngine, tmp_path: Path
) -> None:
    topic = unique_topic("ledger.entries.v1")
    create_topics(kafka_cluster.bootstrap_servers, [topic], partitions=3)
    publisher = KafkaEntryPublisher(KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap_servers), topic)
    capture = ChangeCapture(engine, publisher, tmp_path / "checkpoint.json", pacing=Pacing(batch_changes_max=64))
    await write(engine, 1, 300)
    while await capture.run_once():
        pass
    entries = consume_all(kafka_cluster.bootstrap_servers, topic, 600)
    assert len(entries) == 600
    assert len({e.event_id for e in entries}) == 600
    assert_per_account_order(entries)
    assert {int(e.transfer_id) for e in entries} == set(range(1, 301))


async def test_restart_mid_stream_re_emits_only_within_the_window(
    kafka_cluster: KafkaCluster, engine: EmbeddedEngine, tmp_path: Path
) -> None:
    topic = unique_topic("ledger.entries.v1")
    create_topics(kafka_cluster.bootstrap_servers, [topic])
    settings = KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap_servers)
    checkpoint = tmp_path / "checkpoint.json"
    window = 50
    await write(engine, 1, 100)
    await ChangeCapture(
        engine, KafkaEntryPublisher(settings, topic), checkpoint, pacing=Pacing(batch_changes_max=window)
    ).run_once()
    shutil.copy(checkpoint, tmp_path / "before-crash.json")
    await ChangeCapture(
        engine, KafkaEntryPublisher(settings, topic), checkpoint, pacing=Pacing(batch_changes_max=window)
    ).run_once()
    # The process died after Kafka acknowledged the batch but before its checkpoint was saved.
    shutil.copy(tmp_path / "before-crash.json", checkpoint)
    await write(engine, 101, 20)
    restarted = ChangeCapture(
        engine, KafkaEntryPublisher(settings, topic), checkpoint, pacing=Pacing(batch_changes_max=window)
    )
    while await restarted.run_once():
        pass
    entries = consume_all(kafka_cluster.bootstrap_servers, topic, 2 * (120 + window))
    ids = [e.event_id for e in entries]
    assert {int(e.transfer_id) for e in entries} == set(range(1, 121)), "no gap"
    duplicates = len(ids) - len(set(ids))
    assert duplicates == 2 * window, "duplicates only within the documented window (one batch)"


async def test_three_brokers_stopping_one_mid_stream_loses_nothing(
    kafka_cluster_3: KafkaCluster, engine: EmbeddedEngine, tmp_path: Path
) -> None:
    topic = unique_topic("ledger.entries.v1")
    create_topics(kafka_cluster_3.bootstrap_servers, [topic], partitions=3, replication=3, min_isr=2)
    publisher = KafkaEntryPublisher(KafkaSettings(bootstrap_servers=kafka_cluster_3.bootstrap_servers), topic)
    capture = ChangeCapture(engine, publisher, tmp_path / "checkpoint.json", pacing=Pacing(batch_changes_max=50))
    try:
        for round_ in range(6):
            await write(engine, 1 + round_ * 50, 50)
            if round_ == 2:
                kafka_cluster_3.stop_broker(2)  # Mid-stream: leaders move, acks=all still met by 2 ISRs.
            while await capture.run_once():
                pass
    finally:
        kafka_cluster_3.start_broker(2)
    entries = consume_all(kafka_cluster_3.bootstrap_servers, topic, 600)
    assert {int(e.transfer_id) for e in entries} == set(range(1, 301))
    assert len({e.event_id for e in entries}) == 600
    assert_per_account_order(entries)
