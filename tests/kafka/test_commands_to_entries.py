"""The whole Kafka path on a real broker: commands on ledger.commands.v1 → ingestion → group commit →
engine → change capture → ledger.entries.v1. Every posted command appears exactly once (two entries),
each account's entries arrive in engine-timestamp order, carry their command's metadata, and the
balances they carry end where the engine's balances (and the sums of the commands) are."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.changes.poller import ChangeCapture
from facade.kafka.entries_publisher import KafkaEntryPublisher
from facade.kafka.ingest import CommandIngestor
from facade.service import LedgerService
from ledger_events.gen.ledger.v1 import entries_pb2
from ledger_testkit.kafka_broker import KafkaCluster
from tests.kafka.test_entries_stream import consume_all
from tests.kafka.test_ingestion import (
    INGEST_CLIENT,
    accounts,
    command,
    credit,
    ingest,
    kafka_settings,
    produce,
    service,  # noqa: F401 - the fixture
    transfer,
)
from tests.kafka_fixtures import create_topics, unique_topic

pytestmark = pytest.mark.kafka


async def test_commands_in_entries_out_in_order_with_balances(
    kafka_cluster: KafkaCluster,
    service: LedgerService,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    settings = kafka_settings(kafka_cluster).model_copy(update={"entries_topic": unique_topic("ledger.entries.v1")})
    create_topics(settings.bootstrap_servers, [settings.entries_topic])
    alice, bob, carol = await accounts(service, "alice", "bob", "carol")
    overdraw = pb.Leg(type=pb.LEG_TYPE_DEBIT, account_id=carol, amount="1000000", currency="USD")
    records = [(alice, command(f"c{i}", credit(alice, 1_000 + i), f"corr-c{i}")) for i in range(30)]
    records += [(alice, command(f"t{i}", transfer(alice, bob, 10 + i), f"corr-t{i}")) for i in range(20)]
    records += [(bob, command(f"u{i}", transfer(bob, carol, 5), f"corr-u{i}")) for i in range(10)]
    records += [(alice, command("c0", credit(alice, 1_000), "corr-c0"))]  # A duplicate: posts once.
    records += [(carol, command("x", overdraw, "corr-x"))]  # Rejected: no entries.
    produce(settings, records)
    ingestor = CommandIngestor(service, settings, INGEST_CLIENT)
    try:
        await ingest(ingestor, len(records))
    finally:
        ingestor.close()

    publisher = KafkaEntryPublisher(settings, settings.entries_topic)
    capture = ChangeCapture(service.engine, publisher, tmp_path / "capture.json", metadata=service.store)
    try:
        while await capture.run_once():
            pass
    finally:
        publisher.close()
    posted = 30 + 20 + 10
    # Blocking consumer: off the loop, as the service itself would.
    entries = await asyncio.to_thread(consume_all, settings.bootstrap_servers, settings.entries_topic, 2 * posted)

    assert len({e.event_id for e in entries}) == len(entries) == 2 * posted, "each change once, two sides"
    by_account: dict[str, list[entries_pb2.LedgerEntry]] = defaultdict(list)
    for entry in entries:
        by_account[entry.account_id].append(entry)
    for account_entries in by_account.values():
        stamps = [e.engine_timestamp for e in account_entries]
        assert stamps == sorted(stamps), "per-account order is commit order"
    correlations = {e.metadata.correlation_id for e in entries if e.side == entries_pb2.DEBIT}
    assert correlations == {f"corr-{k}{i}" for k, n in (("c", 30), ("t", 20), ("u", 10)) for i in range(n)}
    assert all(e.metadata.source == "kafka" for e in entries)

    expected = {
        alice: sum(1_000 + i for i in range(30)) - sum(10 + i for i in range(20)),
        bob: sum(10 + i for i in range(20)) - 10 * 5,
        carol: 10 * 5,
    }
    engine_accounts = {str(a.id): a for a in await service.engine.lookup_accounts([int(a) for a in expected])}
    for account_id, balance in expected.items():
        last = by_account[account_id][-1].balance_after
        engine = engine_accounts[account_id]
        assert int(last.credits_posted) - int(last.debits_posted) == balance
        assert (int(last.credits_posted), int(last.debits_posted)) == (engine.credits_posted, engine.debits_posted)
