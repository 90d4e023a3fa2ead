"""Kafka command ingestion on a real broker: results, dedup on redelivery, DLQ."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message, Producer

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import SCOPES_ALL, Principal
from facade.domain.accounts import AccountRequest
from facade.engine.embedded import EmbeddedEngine
from facade.kafka.ingest import CLIENT_HEADER, CommandIngestor, IngestError
from facade.metadata_store import MetadataStore
from facade.service import LedgerService
from facade.settings import ApiSettings, KafkaSettings
from ledger_testkit.kafka_broker import KafkaCluster
from tests.kafka_fixtures import create_topics, unique_topic

pytestmark = pytest.mark.kafka
INGEST_CLIENT = "kafka-ingest"
WAIT_SECONDS = 60.0


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[LedgerService]:
    engine = await EmbeddedEngine.open(tmp_path / "engine")
    store = await MetadataStore.open(tmp_path / "metadata.sqlite3")
    ledger = LedgerService(engine, store, ApiSettings())
    await ledger.start()
    yield ledger
    await ledger.close()
    await engine.close()
    await store.close()


def kafka_settings(cluster: KafkaCluster) -> KafkaSettings:
    settings = KafkaSettings(
        bootstrap_servers=cluster.bootstrap_servers,
        commands_topic=unique_topic("ledger.commands.v1"),
        results_topic=unique_topic("ledger.results.v1"),
        commands_dlq_topic=unique_topic("ledger.commands.dlq.v1"),
        consumer_group=unique_topic("ledger-ingest"),
    )
    create_topics(
        cluster.bootstrap_servers, [settings.commands_topic, settings.results_topic, settings.commands_dlq_topic]
    )
    return settings


async def accounts(service: LedgerService, *references: str) -> list[str]:
    owner = Principal(INGEST_CLIENT, SCOPES_ALL)
    return [
        str((await service.create_account(owner, AccountRequest("USD", r, r, 1, {}))).record.account_id)
        for r in references
    ]


def produce(settings: KafkaSettings, records: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "enable.idempotence": True, "acks": "all"})
    for key, value in records:
        producer.produce(
            settings.commands_topic,
            key=key,
            value=value,
            headers=[("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")],
        )
    assert producer.flush(30) == 0


def command(key: str, leg: pb.Leg, correlation: str = "") -> bytes:
    return pb.PostTransactionRequest(
        idempotency_key=key, legs=[leg], metadata=pb.TransactionMetadata(source="kafka", correlation_id=correlation)
    ).SerializeToString()


def credit(account: str, amount: int) -> pb.Leg:
    return pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=account, amount=str(amount), currency="USD")


def transfer(source: str, destination: str, amount: int) -> pb.Leg:
    return pb.Leg(
        type=pb.LEG_TYPE_TRANSFER, from_account_id=source, to_account_id=destination, amount=str(amount), currency="USD"
    )


EXTRA_WAIT_SECONDS = 3.0
"""How long a reader asking for one record more than expected waits for a duplicate to show up."""


def read(
    settings: KafkaSettings,
    topic: str,
    count: int,
    isolation: str = "read_committed",
    wait_seconds: float = WAIT_SECONDS,
) -> list[Message]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": unique_topic("reader"),
            "auto.offset.reset": "earliest",
            "isolation.level": isolation,
        }
    )
    consumer.subscribe([topic])
    messages: list[Message] = []
    deadline = time.monotonic() + wait_seconds
    while len(messages) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            messages.append(message)
    consumer.close()
    return messages


def header(message: Message, key: str) -> str:
    headers = message.headers() or []
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    return next((v.decode() if isinstance(v, bytes) else str(v)) for k, v in pairs if k == key and v is not None)


async def ingest(ingestor: CommandIngestor, count: int) -> None:
    handled = 0
    deadline = time.monotonic() + WAIT_SECONDS
    while handled < count:
        assert time.monotonic() < deadline, f"ingested {handled} of {count}"
        handled += await ingestor.run_once()


async def balance(service: LedgerService, account: str) -> int:
    [engine_account] = await service.engine.lookup_accounts([int(account)])
    return engine_account.credits_posted - engine_account.debits_posted


async def test_commands_in_results_out_with_correct_balances(
    kafka_cluster: KafkaCluster, service: LedgerService
) -> None:
    settings = kafka_settings(kafka_cluster)
    alice, bob = await accounts(service, "alice", "bob")
    records = [(alice, command(f"c{i}", credit(alice, 100), f"corr-{i}")) for i in range(40)]
    records += [(alice, command(f"t{i}", transfer(alice, bob, 10), f"corr-t{i}")) for i in range(20)]
    produce(settings, records)
    ingestor = CommandIngestor(service, settings, INGEST_CLIENT)
    try:
        await ingest(ingestor, 60)
    finally:
        ingestor.close()
    assert (await balance(service, alice), await balance(service, bob)) == (40 * 100 - 20 * 10, 200)
    results = read(settings, settings.results_topic, 60)
    assert len(results) == 60
    assert {header(m, "status") for m in results} == {"POSTED"}
    assert {header(m, "correlation_id") for m in results} == {f"corr-{i}" for i in range(40)} | {
        f"corr-t{i}" for i in range(20)
    }
    parsed = [pb.TransactionResult.FromString(m.value() or b"") for m in results]
    assert all(r.HasField("transaction") for r in parsed)


class CrashBeforeCommit(CommandIngestor):
    """Dies after the write is durable and the results are produced, before the transaction commits."""

    def _commit(self) -> None:
        raise IngestError("simulated crash before the transaction commit")


async def test_duplicates_and_redelivered_commands_post_once(
    kafka_cluster: KafkaCluster, service: LedgerService
) -> None:
    settings = kafka_settings(kafka_cluster)
    [alice] = await accounts(service, "alice")
    produce(settings, [(alice, command("dup", credit(alice, 500))), (alice, command("dup", credit(alice, 500)))])
    crashing = CrashBeforeCommit(service, settings, INGEST_CLIENT)
    with pytest.raises(IngestError):
        await ingest(crashing, 2)
    crashing.close()
    assert await balance(service, alice) == 500
    # A new consumer in the same group gets the records again: the aborted round committed no offsets.
    restarted = CommandIngestor(service, settings, INGEST_CLIENT)
    try:
        await ingest(restarted, 2)
    finally:
        restarted.close()
    assert await balance(service, alice) == 500
    # Whatever of the aborted round's results reached the log, no read_committed consumer sees it.
    assert len(read(settings, settings.results_topic, 2)) == 2
    messages = read(settings, settings.results_topic, 3, wait_seconds=EXTRA_WAIT_SECONDS)
    visible = [pb.TransactionResult.FromString(m.value() or b"") for m in messages]
    assert len(visible) == 2
    assert {r.transaction.transaction_id for r in visible} == {visible[0].transaction.transaction_id}
    assert all(r.transaction.deduplicated for r in visible), "the original post was the aborted round's"


async def test_poison_and_rejected_commands_go_to_the_dlq(kafka_cluster: KafkaCluster, service: LedgerService) -> None:
    settings = kafka_settings(kafka_cluster)
    [alice] = await accounts(service, "alice")
    produce(
        settings,
        [
            ("x", b"\xff\xff not protobuf"),
            (alice, command("overdraw", pb.Leg(type=pb.LEG_TYPE_DEBIT, account_id=alice, amount="5", currency="USD"))),
            (alice, command("fine", credit(alice, 7))),
        ],
    )
    ingestor = CommandIngestor(service, settings, INGEST_CLIENT)
    try:
        await ingest(ingestor, 3)
    finally:
        ingestor.close()
    dlq = read(settings, settings.commands_dlq_topic, 2)
    assert sorted(header(m, "reason") for m in dlq) == ["INSUFFICIENT_FUNDS", "MALFORMED_COMMAND"]
    assert all(header(m, "source_topic") == settings.commands_topic for m in dlq)
    results = read(settings, settings.results_topic, 3)
    assert sorted(header(m, "status") for m in results) == ["POSTED", "REJECTED", "REJECTED"]
    assert await balance(service, alice) == 7


class CommitFailsOnce(CommandIngestor):
    """The transaction commit fails once (say, a group rebalance): run() must abort, rewind and carry on."""

    failed = False

    def _commit(self) -> None:
        if not self.failed:
            self.failed = True
            raise IngestError("simulated transaction commit failure")
        super()._commit()


async def test_run_survives_a_failed_round_and_posts_everything_once(
    kafka_cluster: KafkaCluster, service: LedgerService
) -> None:
    import asyncio

    settings = kafka_settings(kafka_cluster)
    [alice] = await accounts(service, "alice")
    produce(settings, [(alice, command(f"r{i}", credit(alice, 10))) for i in range(20)])
    ingestor = CommitFailsOnce(service, settings, INGEST_CLIENT)
    stop = asyncio.Event()
    running = asyncio.create_task(ingestor.run(stop))
    try:
        # The failed round's results were aborted; the retried round's 20 are the visible ones.
        await asyncio.to_thread(read, settings, settings.results_topic, 20)
    finally:
        stop.set()
        await running
        ingestor.close()
    assert ingestor.failed
    assert await balance(service, alice) == 200, "the failed round's commands posted once"
    messages = read(settings, settings.results_topic, 21, wait_seconds=EXTRA_WAIT_SECONDS)
    visible = [pb.TransactionResult.FromString(m.value() or b"") for m in messages]
    assert len(visible) == 20
    assert len({r.transaction.transaction_id for r in visible}) == 20


async def test_commands_act_for_the_client_they_name_when_permitted(
    kafka_cluster: KafkaCluster, tmp_path: Path
) -> None:
    """An account created over gRPC by client-a is credited by a command acting for client-a; a command
    for a client the ingestion principal may not act for is refused PERMISSION_DENIED into the DLQ."""
    engine = await EmbeddedEngine.open(tmp_path / "engine2")
    store = await MetadataStore.open(tmp_path / "metadata2.sqlite3")
    ledger = LedgerService(engine, store, ApiSettings())
    await ledger.start()
    settings = kafka_settings(kafka_cluster).model_copy(update={"ingest_acts_for": ["client-a"]})
    try:
        owner = Principal("client-a", SCOPES_ALL)
        alice = str((await ledger.create_account(owner, AccountRequest("USD", "a", "a", 1, {}))).record.account_id)
        producer = Producer({"bootstrap.servers": settings.bootstrap_servers, "acks": "all"})
        as_a: list[tuple[str, str | bytes | None]] = [(CLIENT_HEADER, b"client-a")]
        producer.produce(settings.commands_topic, key=alice, value=command("p1", credit(alice, 70)), headers=as_a)
        as_b: list[tuple[str, str | bytes | None]] = [(CLIENT_HEADER, b"client-b")]
        producer.produce(settings.commands_topic, key=alice, value=command("p2", credit(alice, 5)), headers=as_b)
        # No header: the default ingestion client, which does not own client-a's account.
        producer.produce(settings.commands_topic, key=alice, value=command("p3", credit(alice, 9)))
        assert producer.flush(30) == 0
        ingestor = CommandIngestor(ledger, settings, INGEST_CLIENT)
        try:
            await ingest(ingestor, 3)
        finally:
            ingestor.close()
        assert await balance(ledger, alice) == 70
        by_key = {header(m, "idempotency_key"): m for m in read(settings, settings.results_topic, 3)}
        assert header(by_key["p1"], "status") == "POSTED"
        assert (header(by_key["p2"], "status"), header(by_key["p2"], "reason")) == ("REJECTED", "PERMISSION_DENIED")
        assert (header(by_key["p3"], "status"), header(by_key["p3"], "reason")) == ("REJECTED", "ACCOUNT_NOT_FOUND")
        dlq = read(settings, settings.commands_dlq_topic, 2)
        assert sorted(header(m, "reason") for m in dlq) == ["ACCOUNT_NOT_FOUND", "PERMISSION_DENIED"]
    finally:
        await ledger.close()
        await engine.close()
        await store.close()
