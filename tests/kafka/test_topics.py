"""Topic provisioning and Kafka health on a real broker: missing topics are created with the settings'
partitions, replication and min.insync.replicas; a mismatch refuses; health says why records cannot be
delivered; the broker script works as the README runs it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from facade.api.ops import kafka_check
from facade.kafka.entries_publisher import KafkaEntryPublisher, PublishError
from facade.kafka.topics import TopicError, TopicHealth, TopicRole, ensure_topics, topic_specs
from facade.settings import KafkaSettings
from ledger_events.gen.ledger.v1 import entries_pb2
from ledger_testkit.kafka_broker import KafkaCluster, _kraft_cluster_id
from tests.kafka_fixtures import unique_topic

pytestmark = pytest.mark.kafka
ADMIN_TIMEOUT_SECONDS = 30.0
REPO = Path(__file__).resolve().parents[2]


def unique_settings(bootstrap: str, **overrides: object) -> KafkaSettings:
    prefix = unique_topic("t")
    names = {
        "entries_topic": f"{prefix}.entries",
        "commands_topic": f"{prefix}.commands",
        "results_topic": f"{prefix}.results",
        "commands_dlq_topic": f"{prefix}.dlq",
        "checkpoints_topic": f"{prefix}.checkpoints",
    }
    return KafkaSettings.model_validate({"bootstrap_servers": bootstrap, **names, **overrides})


def describe(bootstrap: str, name: str) -> tuple[int, int, dict[str, str]]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = admin.list_topics(timeout=ADMIN_TIMEOUT_SECONDS).topics[name]
    replicas = min(len(p.replicas) for p in topic.partitions.values())
    [future] = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)]).values()
    config = {key: entry.value for key, entry in future.result(timeout=ADMIN_TIMEOUT_SECONDS).items()}
    return len(topic.partitions), replicas, config


def delete_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.delete_topics([name], operation_timeout=ADMIN_TIMEOUT_SECONDS).values():
        future.result(timeout=ADMIN_TIMEOUT_SECONDS)


def test_missing_topics_are_created_then_verified(kafka_cluster: KafkaCluster) -> None:
    bootstrap = kafka_cluster.bootstrap_servers
    settings = unique_settings(bootstrap, topic_partitions=4, entries_retention_ms=86_400_000)
    specs = topic_specs(settings)
    assert {spec.role for spec in specs} == set(TopicRole)
    assert sorted(ensure_topics(settings)) == sorted(spec.name for spec in specs)
    for spec in specs:
        partitions, replicas, config = describe(bootstrap, spec.name)
        assert (partitions, replicas) == (4, 1)
        assert config["min.insync.replicas"] == "1"
    assert describe(bootstrap, settings.entries_topic)[2]["retention.ms"] == "86400000"
    assert describe(bootstrap, settings.entries_topic)[2]["cleanup.policy"] == "delete"
    assert ensure_topics(settings) == []  # Present and as configured: nothing created, nothing refused.


def test_a_partition_or_replication_mismatch_refuses(kafka_cluster: KafkaCluster) -> None:
    settings = unique_settings(kafka_cluster.bootstrap_servers, topic_partitions=2)
    ensure_topics(settings)
    other_count = settings.model_copy(update={"topic_partitions": 3})
    with pytest.raises(TopicError, match=rf"{settings.entries_topic} \(entries\) has 2 partitions, settings say 3"):
        ensure_topics(other_count)
    more_replicas = settings.model_copy(update={"topic_replication_factor": 3})
    with pytest.raises(TopicError, match="has replication factor 1, settings require 3"):
        ensure_topics(more_replicas)
    # A missing topic that needs more replicas than there are brokers is refused before anything is created.
    fresh = unique_settings(kafka_cluster.bootstrap_servers, topic_replication_factor=3, topic_min_insync_replicas=2)
    with pytest.raises(TopicError, match="needs that many brokers, the cluster has 1"):
        ensure_topics(fresh)
    assert (
        fresh.entries_topic
        not in AdminClient({"bootstrap.servers": kafka_cluster.bootstrap_servers})
        .list_topics(timeout=ADMIN_TIMEOUT_SECONDS)
        .topics
    )


def test_min_insync_above_replication_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="cannot exceed topic_replication_factor"):
        KafkaSettings(topic_replication_factor=1, topic_min_insync_replicas=2)


async def test_health_fails_while_topics_are_missing_or_records_undeliverable(kafka_cluster: KafkaCluster) -> None:
    bootstrap = kafka_cluster.bootstrap_servers
    settings = unique_settings(bootstrap, delivery_timeout_ms=1_000)
    health = TopicHealth(settings)
    check = kafka_check(health)
    with pytest.raises(RuntimeError, match=f"topics missing: {settings.entries_topic}"):
        await check()
    ensure_topics(settings)
    await check()  # Every topic present, nothing failed: healthy.

    entry = entries_pb2.LedgerEntry(event_id="1:D", account_id="7")
    nowhere = KafkaEntryPublisher(settings, topic=unique_topic("absent"), health=health)
    with pytest.raises(PublishError):
        await nowhere.publish([entry])
    with pytest.raises(RuntimeError, match="records undeliverable"):
        await check()
    publisher = KafkaEntryPublisher(settings, health=health)
    await publisher.publish([entry])  # A delivery succeeds again: healthy again.
    await check()
    publisher.close()

    delete_topic(bootstrap, settings.results_topic)
    # Deletion propagates to the cluster metadata asynchronously: the check fails once it has.
    deadline = time.monotonic() + ADMIN_TIMEOUT_SECONDS
    while (problem := await asyncio.to_thread(health.problem, 1.0)) is None:
        assert time.monotonic() < deadline, "health still ok after the results topic was deleted"
        await asyncio.sleep(0.2)
    assert problem == f"topics missing: {settings.results_topic}"
    with pytest.raises(RuntimeError, match=f"topics missing: {settings.results_topic}"):
        await check()


def test_cluster_ids_never_start_with_a_dash() -> None:
    ids = [_kraft_cluster_id() for _ in range(4096)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids)


def test_broker_script_runs_as_the_readme_says(tmp_path: Path) -> None:
    """`python scripts/kafka_broker.py start` with the system Python (no confluent_kafka there): it
    re-runs itself in .venv, prints the bootstrap address; `ledger kafka init` provisions; stop stops."""
    data_dir = tmp_path / "kafka"
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    started = subprocess.run(
        [python, "scripts/kafka_broker.py", "start", "--data-dir", str(data_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip().splitlines()[-1]
        assert bootstrap.startswith("127.0.0.1:")
        again = subprocess.run(
            [python, "scripts/kafka_broker.py", "start", "--data-dir", str(data_dir)],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert again.returncode == 1 and "already running" in again.stderr
        init = subprocess.run(
            [str(REPO / ".venv/bin/ledger"), "kafka", "init"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
            env={"LEDGER_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert init.returncode == 0, init.stderr
        assert init.stdout.count("created ") == len(TopicRole)
    finally:
        stopped = subprocess.run(
            [python, "scripts/kafka_broker.py", "stop", "--data-dir", str(data_dir)],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr
    cluster = KafkaCluster.load(data_dir)
    assert all(node.pid == 0 for node in cluster.nodes)


async def test_the_service_refuses_to_start_on_mismatched_topics_and_provisions_them_otherwise(
    kafka_cluster: KafkaCluster, tmp_path: Path
) -> None:
    from facade.app import start
    from tests.api.conftest import make_settings

    kafka = unique_settings(kafka_cluster.bootstrap_servers, topic_partitions=2, ingest_enabled=False,
                            change_capture_checkpoint=tmp_path / "capture.json")  # fmt: skip
    settings = make_settings(tmp_path)
    settings.kafka = kafka
    server = await start(settings)  # Missing topics: created before anything serves.
    await server.stop()
    assert describe(kafka_cluster.bootstrap_servers, kafka.entries_topic)[0] == 2
    settings.kafka = kafka.model_copy(update={"topic_partitions": 4})
    with pytest.raises(TopicError, match="has 2 partitions, settings say 4"):
        await start(settings)
