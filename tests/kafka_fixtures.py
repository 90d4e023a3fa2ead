"""Real Kafka for tests: KRaft brokers on 127.0.0.1 started by scripts/kafka_broker.py.

Session-scoped: one single-broker cluster and (on first use) one three-broker cluster for fault tests.
If the broker cannot be fetched or started, tests fail: CI must exercise real Kafka, never skip it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from ledger_testkit.kafka_broker import KafkaCluster

TOPIC_CREATE_TIMEOUT_SECONDS = 30.0


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(Path(tmp_path_factory.mktemp("kafka-1")), brokers=1)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kafka_cluster_3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(Path(tmp_path_factory.mktemp("kafka-3")), brokers=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def create_topics(
    bootstrap_servers: str, names: list[str], partitions: int = 3, replication: int = 1, min_isr: int = 1
) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    futures = admin.create_topics(
        [
            NewTopic(name, num_partitions=partitions, replication_factor=replication,
                     config={"min.insync.replicas": str(min_isr)})
            for name in names
        ],
        operation_timeout=TOPIC_CREATE_TIMEOUT_SECONDS,
    )  # fmt: skip
    for future in futures.values():
        future.result(timeout=TOPIC_CREATE_TIMEOUT_SECONDS)


def unique_topic(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"
