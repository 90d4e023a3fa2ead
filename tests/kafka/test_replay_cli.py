"""`ledger replay` on a real broker: the console script re-emits the engine's confirmed entries to a
topic, identical to the live stream (same event ids, same audit-chain links), from the beginning or from
an engine timestamp."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from facade.auth import SCOPES_ALL, Principal
from facade.changes.poller import ChangeCapture
from facade.domain.accounts import AccountRequest
from facade.domain.transactions import Leg, Metadata, PostRequest
from facade.engine.embedded import EmbeddedEngine
from facade.kafka.entries_publisher import KafkaEntryPublisher
from facade.metadata_store import MetadataStore
from facade.service import LedgerService
from facade.settings import ApiSettings, KafkaSettings
from ledger_events.gen.ledger.v1 import entries_pb2
from ledger_testkit.kafka_broker import KafkaCluster
from ledger_testkit.service import ledger_executable
from tests.kafka.test_entries_stream import consume_all
from tests.kafka_fixtures import create_topics, unique_topic

pytestmark = pytest.mark.kafka
TRANSACTIONS = 12


async def post_and_capture(directory: Path, settings: KafkaSettings, live_topic: str) -> None:
    engine = await EmbeddedEngine.open(directory / "engine")
    store = await MetadataStore.open(directory / "metadata.sqlite3")
    service = LedgerService(engine, store, ApiSettings())
    await service.start()
    owner = Principal("replay-test", SCOPES_ALL)
    try:
        alice = str(
            (await service.create_account(owner, AccountRequest("USD", "alice", "alice", 2, {}))).record.account_id
        )
        for i in range(TRANSACTIONS):
            leg = Leg(1, account_id=alice, amount=str(100 + i), currency="USD")
            await service.post_transactions(owner, [PostRequest(f"r{i}", [leg], Metadata(correlation_id=f"c{i}"))])
        publisher = KafkaEntryPublisher(settings, live_topic)
        capture = ChangeCapture(engine, publisher, directory / "capture.json", metadata=store)
        while await capture.run_once():
            pass
        publisher.close()
    finally:
        await service.close()
        await engine.close()  # `ledger replay` opens the engine's directory itself.
        await store.close()


def ledger_replay(directory: Path, bootstrap: str, start: str, topic: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "LEDGER_ENGINE__DATA_DIR": str(directory / "engine"),
        "LEDGER_API__METADATA_DB": str(directory / "metadata.sqlite3"),
        "LEDGER_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
    }
    ledger = ledger_executable()
    command = [ledger, "replay", "--from", start, "--to-topic", topic]
    return subprocess.run(command, check=False, env=env, cwd=directory, capture_output=True, text=True, timeout=120)


async def test_replay_matches_the_live_stream(kafka_cluster: KafkaCluster, tmp_path: Path) -> None:
    bootstrap = kafka_cluster.bootstrap_servers
    live, replayed, tail = (unique_topic(f"ledger.{name}") for name in ("live", "replayed", "tail"))
    create_topics(bootstrap, [live, replayed, tail])
    await post_and_capture(tmp_path, KafkaSettings(bootstrap_servers=bootstrap), live)
    live_entries = await asyncio.to_thread(consume_all, bootstrap, live, 2 * TRANSACTIONS)
    assert len(live_entries) == 2 * TRANSACTIONS

    done = ledger_replay(tmp_path, bootstrap, "beginning", replayed)
    assert done.returncode == 0, done.stderr
    assert f"replayed {TRANSACTIONS} changes to {replayed}" in done.stdout
    assert "replay" in done.stderr  # The progress bar.
    replayed_entries = await asyncio.to_thread(consume_all, bootstrap, replayed, 2 * TRANSACTIONS)

    def identity(entries: list[entries_pb2.LedgerEntry]) -> dict[str, tuple[int, bytes, str]]:
        return {e.event_id: (e.chain.sequence, e.chain.hash, e.metadata.correlation_id) for e in entries}

    assert identity(replayed_entries) == identity(live_entries)
    assert sorted(e.SerializeToString(deterministic=True) for e in replayed_entries) == sorted(
        e.SerializeToString(deterministic=True) for e in live_entries
    ), "replayed entries are byte-for-byte the live ones"

    stamps = sorted({e.engine_timestamp for e in live_entries})
    start = stamps[TRANSACTIONS // 2]
    done = ledger_replay(tmp_path, bootstrap, str(start), tail)
    assert done.returncode == 0, done.stderr
    tail_entries = await asyncio.to_thread(consume_all, bootstrap, tail, TRANSACTIONS)
    assert {e.engine_timestamp for e in tail_entries} == set(stamps[TRANSACTIONS // 2 :])
    assert identity(tail_entries).items() <= identity(live_entries).items(), "links carried from the start"
