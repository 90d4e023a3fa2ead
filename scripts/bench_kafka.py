#!/usr/bin/env python3
"""Benchmark the Kafka path end to end: commands in → durable → entries out.

Starts a real single-broker KRaft Kafka (scripts/kafka_broker.py), an embedded engine and metadata
store, the command ingestor and the change-capture publisher, then produces N transfer commands to
`ledger.commands.v1` as fast as the producer can and consumes `ledger.entries.v1` until every entry
arrived. Each command's `metadata.occurred_at_ns` is its produce time; the mapping carries it into
user_data_64 and so into every entry, which gives the end-to-end latency of each transaction
(produced → ingested → durable → published → consumed). Everything shares this 2-core machine with
the broker's JVM.

    python scripts/bench_kafka.py [--commands 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.auth import SCOPES_ALL, Principal
from facade.changes.poller import ChangeCapture
from facade.domain.accounts import AccountRequest
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import ChangeEventsFilter
from facade.kafka.entries_publisher import KafkaEntryPublisher
from facade.kafka.ingest import CommandIngestor
from facade.kafka.topics import ensure_topics
from facade.metadata_store import MetadataStore
from facade.runtime import tune_gc
from facade.service import LedgerService
from facade.settings import ApiSettings, KafkaSettings
from ledger_events.gen.ledger.v1 import entries_pb2
from ledger_testkit.kafka_broker import KafkaCluster
from ledger_testkit.stats import percentile

ACCOUNTS = 100
PARTITIONS = 6
TIMEOUT_SECONDS = 600.0


def produce_commands(settings: KafkaSettings, accounts: list[str], count: int) -> float:
    producer = Producer(
        {"bootstrap.servers": settings.bootstrap_servers, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
    )
    started = time.perf_counter()
    for n in range(count):
        source, destination = accounts[n % ACCOUNTS], accounts[(n * 7 + 1) % ACCOUNTS]
        if source == destination:
            destination = accounts[(n + 1) % ACCOUNTS]
        value = pb.PostTransactionRequest(
            idempotency_key=f"bench-{n}",
            legs=[
                pb.Leg(
                    type=pb.LEG_TYPE_TRANSFER,
                    from_account_id=source,
                    to_account_id=destination,
                    amount="1",
                    currency="USD",
                )
            ],
            metadata=pb.TransactionMetadata(source="bench", occurred_at_ns=time.time_ns()),
        ).SerializeToString()
        while True:
            try:
                producer.produce(settings.commands_topic, key=source, value=value)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(60)
    return time.perf_counter() - started


def consume_entries(settings: KafkaSettings, count: int, latencies: list[float], done: threading.Event) -> None:
    consumer = Consumer(
        {"bootstrap.servers": settings.bootstrap_servers, "group.id": "bench-reader", "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([settings.entries_topic])
    seen = 0
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while seen < count and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.2):
            if message.error():
                continue
            entry = entries_pb2.LedgerEntry.FromString(message.value() or b"")
            if entry.side == entries_pb2.DEBIT and entry.user_data_64:  # One sample per transaction.
                latencies.append((time.time_ns() - entry.user_data_64) / 1e9)
            seen += 1
    consumer.close()
    done.set()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=50_000)
    args = parser.parse_args()
    tune_gc()
    work = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    cluster = KafkaCluster(work / "kafka", brokers=1)
    cluster.start()
    try:
        settings = KafkaSettings(bootstrap_servers=cluster.bootstrap_servers, topic_partitions=PARTITIONS)
        ensure_topics(settings)  # As the service provisions them.
        engine = await EmbeddedEngine.open(work / "engine")
        store = await MetadataStore.open(work / "metadata.sqlite3")
        service = LedgerService(engine, store, ApiSettings())
        await service.start()
        owner = Principal(settings.ingest_client_id, SCOPES_ALL)
        accounts = [
            str((await service.create_account(owner, AccountRequest("USD", f"a{i}", "", 2, {}))).record.account_id)
            for i in range(ACCOUNTS)
        ]
        setup_changes = len(await engine.get_change_events(ChangeEventsFilter()))
        stop = asyncio.Event()
        ingestor = CommandIngestor(service, settings, settings.ingest_client_id)
        capture = ChangeCapture(engine, KafkaEntryPublisher(settings), work / "checkpoint.json", metadata=store)
        tasks = [asyncio.create_task(ingestor.run(stop)), asyncio.create_task(capture.run(stop))]
        latencies: list[float] = []
        done = threading.Event()
        reader = threading.Thread(
            target=consume_entries, args=(settings, 2 * (args.commands + setup_changes), latencies, done)
        )
        reader.start()
        started = time.perf_counter()
        produce_seconds = await asyncio.to_thread(produce_commands, settings, accounts, args.commands)
        while not done.is_set():
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*tasks)
        ingestor.close()
        await service.close()
        await engine.close()
        await store.close()
        print(f"commands: {args.commands:,}  (produced in {produce_seconds:.1f} s)")
        rate = args.commands / elapsed
        print(f"end to end: {rate:,.0f} tx/s over {elapsed:.1f} s (first produce → last entry consumed)")
        print(
            f"latency produce → entry consumed: p50 {percentile(latencies, 0.5) * 1e3:.0f} ms, "
            f"p95 {percentile(latencies, 0.95) * 1e3:.0f} ms, p99 {percentile(latencies, 0.99) * 1e3:.0f} ms "
            f"({len(latencies):,} samples)"
        )
        print(
            "durable: each command's write was fsynced (engine journal + metadata store) before its offsets committed"
        )
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
