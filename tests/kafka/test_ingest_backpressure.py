"""Ingestion under backpressure on a real broker: with a tiny write queue kept busy by other writers,
the consumer pauses its partitions and retries instead of dropping or dead-lettering; in the end every
command posts exactly once and gets exactly one result."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import REGISTRY

from facade.auth import SCOPES_ALL, Principal
from facade.domain.errors import LedgerError
from facade.domain.transactions import Leg, Metadata, PostRequest
from facade.engine.embedded import EmbeddedEngine
from facade.engine.intents import TransactionIntent
from facade.engine.types import CreateTransferResult, Transfer
from facade.kafka.ingest import CommandIngestor
from facade.metadata_store import MetadataStore
from facade.service import LedgerService
from facade.settings import ApiSettings, KafkaSettings
from ledger_testkit.kafka_broker import KafkaCluster
from tests.kafka.test_ingestion import (
    INGEST_CLIENT,
    accounts,
    balance,
    command,
    credit,
    header,
    ingest,
    kafka_settings,
    produce,
    read,
)
from tests.kafka_fixtures import unique_topic

pytestmark = pytest.mark.kafka
COMMANDS = 300


class StalledDisk(EmbeddedEngine):
    """The real embedded engine whose writes wait at a gate: the other writers fill the write queue, and it
    stays full until the consumer has met it full (the test opens the gate then). Without the gate the
    consumer could arrive at a moment the queue was empty and be admitted, and the test would race."""

    gate: asyncio.Event

    async def create_transfers(
        self, transfers: Sequence[Transfer], intents: Sequence[TransactionIntent] = ()
    ) -> list[CreateTransferResult]:
        await self.gate.wait()
        return await super().create_transfers(transfers, intents)


@pytest.fixture
async def tiny_queue_service(tmp_path: Path) -> AsyncIterator[LedgerService]:
    engine = await StalledDisk.open(tmp_path / "engine")
    assert isinstance(engine, StalledDisk)
    engine.gate = asyncio.Event()
    engine.gate.set()  # Open while the accounts are made; the test closes it.
    store = await MetadataStore.open(tmp_path / "metadata.sqlite3")
    ledger = LedgerService(engine, store, ApiSettings(write_queue_transfers_max=4, batch_transfers_max=4))
    await ledger.start()
    yield ledger
    await ledger.close()
    await engine.close()
    await store.close()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_full_write_queue_pauses_the_consumer_and_loses_nothing(
    kafka_cluster: KafkaCluster, tiny_queue_service: LedgerService
) -> None:
    service = tiny_queue_service
    settings = kafka_settings(kafka_cluster)
    alice, other = await accounts(service, "alice", "other")
    produce(settings, [(alice, command(f"k{i}", credit(alice, 1))) for i in range(COMMANDS)])
    rejections = sample("ledger_backpressure_rejections_total", edge="kafka")
    retries = sample("ledger_retries_total", component="kafka_ingest")

    # Other writers (say, gRPC clients) keep the 4-transfer queue busy until the consumer has met it
    # full (then they stop, or a consumer waiting for an empty queue could wait behind them forever).
    owner = Principal(INGEST_CLIENT, SCOPES_ALL)
    stop = asyncio.Event()
    competing_posted = 0
    deadline = asyncio.get_running_loop().time() + 60

    def paused() -> bool:
        return sample("ledger_backpressure_rejections_total", edge="kafka") > rejections

    async def compete(worker: int) -> None:
        nonlocal competing_posted
        n = 0
        while not stop.is_set() and not paused() and asyncio.get_running_loop().time() < deadline:
            n += 1
            request = PostRequest(f"w{worker}-{n}", [Leg(1, account_id=other, amount="1", currency="USD")], Metadata())
            try:
                [result] = await service.post_transactions(owner, [request])
            except LedgerError as error:  # RESOURCE_EXHAUSTED: the queue is full; try again.
                refusals.append(error.reason)
                await asyncio.sleep(0.001)
                continue
            assert not isinstance(result, LedgerError)
            competing_posted += 1

    refusals: list[str] = []
    assert isinstance(service.engine, StalledDisk)
    gate = service.engine.gate
    gate.clear()
    competitors = [asyncio.create_task(compete(worker)) for worker in range(32)]  # More than 2 batches in flight hold.

    async def open_gate_once_paused() -> None:
        while not paused() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        gate.set()

    opener = asyncio.create_task(open_gate_once_paused())
    ingestor = CommandIngestor(service, settings, INGEST_CLIENT)
    try:
        await ingest(ingestor, COMMANDS)
    finally:
        stop.set()
        gate.set()
        await opener
        for task in competitors:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ingestor.close()

    assert paused(), "the consumer never met a full queue"
    assert set(refusals) <= {"WRITE_QUEUE_FULL"}
    assert sample("ledger_retries_total", component="kafka_ingest") > retries
    assert await balance(service, alice) == COMMANDS, "every command posted exactly once"
    assert await balance(service, other) == competing_posted
    results = read(settings, settings.results_topic, COMMANDS)
    assert len(results) == COMMANDS and {header(m, "status") for m in results} == {"POSTED"}
    assert dead_letters(settings) == 0


def dead_letters(settings: KafkaSettings) -> int:
    """Records ever written to the DLQ topic: its partitions' high watermarks."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": unique_topic("dlq-check")})
    try:
        topic = consumer.list_topics(settings.commands_dlq_topic, timeout=10).topics[settings.commands_dlq_topic]
        return sum(
            consumer.get_watermark_offsets(TopicPartition(settings.commands_dlq_topic, p), timeout=10)[1]
            for p in topic.partitions
        )
    finally:
        consumer.close()
