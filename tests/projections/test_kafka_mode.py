"""Kafka mode on a real broker: entries published by change capture are projected by the consumer,
offsets are committed after the insert, and a second delivery of the whole topic doubles nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from facade.changes.poller import ChangeCapture
from facade.engine.embedded import EmbeddedEngine
from facade.kafka.entries_publisher import KafkaEntryPublisher
from facade.settings import ClickHouseSettings, KafkaSettings
from ledger_testkit.kafka_broker import KafkaCluster
from projections import audit
from projections.client import ChdbClient
from projections.kafka_consumer import KafkaProjector
from projections.projector import Projector
from projections.reconcile import reconcile
from tests.kafka_fixtures import create_topics, unique_topic
from tests.projections.conftest import Metadata, Workload, drain

pytestmark = pytest.mark.kafka
ROUNDS = 3
CONSUME_TIMEOUT_SECONDS = 60.0


def consume_until(consumer: KafkaProjector, count: int) -> None:
    deadline = time.monotonic() + CONSUME_TIMEOUT_SECONDS
    while consumer.consumed < count and time.monotonic() < deadline:
        consumer.run_once(timeout_seconds=0.5)
    assert consumer.consumed == count


async def test_kafka_mode_projects_and_deduplicates(
    tmp_path: Path,
    kafka_cluster: KafkaCluster,
    engine: EmbeddedEngine,
    client: ChdbClient,
    metadata: Metadata,
    workload: Workload,
) -> None:
    topic = unique_topic("ledger.entries.test")
    create_topics(kafka_cluster.bootstrap_servers, [topic], partitions=3)
    kafka = KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap_servers)
    publisher = KafkaEntryPublisher(kafka, topic)
    try:
        for number in range(ROUNDS):
            await workload.round(number)
        changes = await drain(ChangeCapture(engine, publisher, tmp_path / "kafka.json", metadata))
    finally:
        publisher.close()
    group = ClickHouseSettings(consumer_group=unique_topic("ledger-projector"))

    projector = Projector(client)
    consumer = KafkaProjector(projector, kafka, group, topic)
    try:
        consume_until(consumer, 2 * changes)
    finally:
        consumer.close()
    report = audit.verify_live(client)
    assert report.ok, report.problems
    assert report.rows_checked == changes
    assert (await reconcile(engine, client)).ok

    # Same group: offsets were committed after the insert, nothing is delivered again.
    again = KafkaProjector(projector, kafka, group, topic)
    try:
        deadline = time.monotonic() + CONSUME_TIMEOUT_SECONDS
        while again.partitions_assigned == 0 and time.monotonic() < deadline:
            assert again.run_once(timeout_seconds=0.5) == 0
        assert again.partitions_assigned == 3
        assert again.run_once(timeout_seconds=1.0) == 0
    finally:
        again.close()

    # Another group: the whole topic again; the projector drops every row as a duplicate.
    inserted = projector.stats.rows_inserted
    replay = KafkaProjector(projector, kafka, ClickHouseSettings(consumer_group=unique_topic("replay")), topic)
    try:
        consume_until(replay, 2 * changes)
    finally:
        replay.close()
    assert projector.stats.rows_inserted == inserted
    assert audit.verify_live(client).rows_checked == changes
