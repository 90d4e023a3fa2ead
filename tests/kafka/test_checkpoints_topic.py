"""Signed checkpoints on `ledger.checkpoints.v1`: what a consumer outside the project reads verifies with
the public key alone, with CloudEvents headers; a re-sealed (unchanged) tree publishes nothing new."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import Consumer

from facade.audit.log import AuditLog
from facade.audit.sink import AuditSink
from facade.changes.poller import ChangeCapture
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, Transfer
from facade.kafka.checkpoints_publisher import CHECKPOINT_TYPE, KafkaCheckpointPublisher
from facade.settings import AuditSettings, KafkaSettings
from ledger_audit_verifier import parse_checkpoint
from ledger_testkit.kafka_broker import KafkaCluster
from tests.kafka_fixtures import create_topics, unique_topic

pytestmark = pytest.mark.kafka
TRANSFERS = 3
POLLS_MAX = 100


async def test_checkpoints_are_published_and_verify(kafka_cluster: KafkaCluster, tmp_path: Path) -> None:
    topic = unique_topic("ledger.checkpoints")
    create_topics(kafka_cluster.bootstrap_servers, [topic], partitions=1)
    settings = KafkaSettings(bootstrap_servers=kafka_cluster.bootstrap_servers, checkpoints_topic=topic)
    log = AuditLog(AuditSettings(data_dir=tmp_path / "audit"))
    sink = AuditSink(log, publishers=[KafkaCheckpointPublisher(settings).publish])
    engine = await EmbeddedEngine.open(tmp_path / "engine")
    try:
        await engine.create_accounts([Account(id=i, ledger=840, code=1) for i in (1, 2)])
        await engine.create_transfers(
            [Transfer(id=100 + i, debit_account_id=1, credit_account_id=2, amount=5 + i, ledger=840, code=1)
             for i in range(TRANSFERS)]
        )  # fmt: skip
        assert await ChangeCapture(engine, sink, tmp_path / "capture.json").run_once() == TRANSFERS
    finally:
        await engine.close()
    sealed = await sink.seal()
    assert sealed.tree_size == TRANSFERS
    assert (await sink.seal()).tree_size == TRANSFERS  # Nothing new: the same checkpoint, not republished.
    consumer = Consumer(
        {"bootstrap.servers": kafka_cluster.bootstrap_servers, "group.id": topic, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    records = []
    try:
        for _ in range(POLLS_MAX):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                records.append(message)
            if records and message is None:
                break
    finally:
        consumer.close()
    assert len(records) == 1
    record = records[0]
    key = log.keys.active().verifier
    value = record.value()
    assert value is not None
    checkpoint = parse_checkpoint(value, key)
    assert (checkpoint.tree_size, checkpoint.root_hash) == (TRANSFERS, log.tree.root(TRANSFERS))
    assert record.key() == str(TRANSFERS).encode()
    headers = dict(record.headers() or [])
    assert headers["ce_type"] == CHECKPOINT_TYPE.encode() and headers["ce_specversion"] == b"1.0"
    log.close()
