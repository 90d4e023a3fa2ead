"""Per-batch latency of the metadata store's `prepare` (idempotency lookup + durable intents, step 1 of
every batch) on SQLite and on PostgreSQL (one statement, one round trip, one commit per batch), for
batches of 100 and 8189 new one-leg transactions, and of the same batch again (all priors, no write).

PostgreSQL: a throwaway local server (tests/postgres_fixtures.py: initdb + pg_ctl, fsync on). Numbers
depend on the disk's fsync latency and the machine's load: compare the rows of one run.

--batch-path: the whole batch path in this process (group committer + metadata store + embedded
engine, durable), on the SQLite store (intent write, engine append, failure write) and on the journal
store (one append carrying transfers, intents and outcomes): CPU µs per transaction (process CPU time,
every thread; the requests are mapped before the clock starts) and bytes written per transaction
(/proc/self/io write_bytes, i.e. what reached the block layer: journal, header copies, SQLite WAL);
its data directories are made in the working directory, so run it from the disk under test.

    .venv/bin/python -m scripts.bench_metadata [--rounds 10] [--batch-path [--transactions 20000]]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.batcher import Committed, GroupCommitter
from facade.domain.accounts import ACCOUNT_CODE_SETTLEMENT, Currencies
from facade.domain.ids import settlement_account_id
from facade.domain.transactions import MappedTransaction, Metadata, PostRequest, map_post
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, AccountFlags
from facade.metadata import JournalMetadataStore, MetadataStore, PostgresMetadataStore, SqliteMetadataStore
from facade.settings import ApiSettings
from ledger_testkit.postgres import start_postgres

BATCH_SIZES = (100, 8189)
CURRENCIES = Currencies(dict(ApiSettings().currencies))


def batch(round_index: int, size: int) -> list[MappedTransaction]:
    leg = pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id="1001", amount="5", currency="USD")
    return [
        map_post(
            "bench",
            PostRequest(f"r{round_index}-n{size}-{i}", [leg], Metadata(description="bench")),
            currencies=CURRENCIES,
        )
        for i in range(size)
    ]


async def measure(store: MetadataStore, rounds: int, size: int) -> tuple[list[float], list[float]]:
    """Milliseconds per prepare: new transactions (intents written), then the same again (priors only)."""
    fresh: list[float] = []
    again: list[float] = []
    for round_index in range(rounds):
        transactions = batch(round_index, size)
        started = time.perf_counter()
        assert await store.prepare(transactions) == {}
        fresh.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        assert len(await store.prepare(transactions)) == size
        again.append((time.perf_counter() - started) * 1000)
    return fresh, again


def describe(values: list[float]) -> str:
    return f"median {statistics.median(values):7.2f} ms, max {max(values):7.2f} ms"


async def run(rounds: int) -> None:
    server = start_postgres()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-metadata-") as directory:
            stores: list[tuple[str, MetadataStore]] = [
                ("sqlite", await SqliteMetadataStore.open(Path(directory) / "metadata.sqlite3")),
                ("postgres", await PostgresMetadataStore.open(server.create_database())),
            ]
            try:
                for size in BATCH_SIZES:
                    for name, store in stores:
                        fresh, again = await measure(store, rounds, size)
                        per_tx_us = statistics.median(fresh) * 1000 / size
                        print(
                            f"{name:8} batch {size:5}: new {describe(fresh)} ({per_tx_us:6.1f} µs/tx); "
                            f"retried {describe(again)}"
                        )
            finally:
                for _, store in stores:
                    await store.close()
    finally:
        server.stop()


BATCH_PATH_CALL_TRANSACTIONS = 100
"""Transactions per submission (a PostTransactions call of 100)."""
BATCH_PATH_SUBMITTERS = 4
"""Concurrent submitters (4 clients), so batches coalesce as they do behind the gRPC edge."""
REFUSED_EVERY = 50
"""Every 50th transaction overdraws an account that may not go negative: a recorded failure."""


def write_bytes() -> int:
    with open("/proc/self/io") as file:
        for line in file:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no write_bytes")


def batch_path_transactions(count: int) -> list[MappedTransaction]:
    credit = pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id="1001", amount="5", currency="USD")
    debit = pb.Leg(type=pb.LEG_TYPE_DEBIT, account_id="1002", amount="5", currency="USD")
    overdraft = pb.Leg(type=pb.LEG_TYPE_DEBIT, account_id="1001", amount=str(10**15), currency="USD")
    metadata = Metadata(description="rent", correlation_id="order-1234", labels={"team": "payments"})
    return [
        map_post(
            "client-a",
            PostRequest(f"pay-{i:08d}", [overdraft] if i % REFUSED_EVERY == 0 else [credit, debit], metadata),
            currencies=CURRENCIES,
        )
        for i in range(count)
    ]


async def batch_path(name: str, directory: Path, transactions: list[MappedTransaction]) -> None:
    engine = await EmbeddedEngine.open(directory / "engine")
    ledger_id = CURRENCIES.get("USD").ledger
    await engine.create_accounts(
        [
            Account(id=1001, ledger=ledger_id, code=1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
            Account(id=1002, ledger=ledger_id, code=1),
            Account(id=settlement_account_id("USD"), ledger=ledger_id, code=ACCOUNT_CODE_SETTLEMENT),
        ]
    )
    path = directory / "metadata.sqlite3"
    store: MetadataStore
    store = await JournalMetadataStore.open(path, engine) if name == "journal" else await SqliteMetadataStore.open(path)
    committer = GroupCommitter(engine, store)
    committer.start()
    calls = [
        transactions[start : start + BATCH_PATH_CALL_TRANSACTIONS]
        for start in range(0, len(transactions), BATCH_PATH_CALL_TRANSACTIONS)
    ]

    async def submitter(index: int) -> int:
        committed = 0
        for call in calls[index::BATCH_PATH_SUBMITTERS]:
            for future in committer.submit(call):
                committed += isinstance(await future, Committed)
        return committed

    try:
        bytes_before, cpu_before, started = write_bytes(), time.process_time(), time.perf_counter()
        committed = sum(await asyncio.gather(*(submitter(i) for i in range(BATCH_PATH_SUBMITTERS))))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_before
        written = write_bytes() - bytes_before
    finally:
        await committer.close()
        await store.close()
        await engine.close()
    count = len(transactions)
    assert committed == count - len(range(0, count, REFUSED_EVERY))
    print(
        f"{name:8} batch path: {count} tx ({committed} committed) in {seconds:5.2f} s = {count / seconds:7.0f} tx/s, "
        f"CPU {cpu * 1e6 / count:6.1f} µs/tx, written {written / count:8.0f} B/tx"
    )


async def run_batch_path(count: int) -> None:
    transactions = batch_path_transactions(count)
    body_bytes = sum(len(t.body) for t in transactions) / count
    print(f"{count} transactions (2 legs, description, correlation id, a label; canonical body {body_bytes:.0f} B)")
    for name in ("sqlite", "journal"):
        with tempfile.TemporaryDirectory(prefix="bench-batch-path-", dir=Path.cwd()) as directory:
            await batch_path(name, Path(directory), transactions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch-path", action="store_true", help="measure the whole batch path instead")
    parser.add_argument("--transactions", type=int, default=20_000)
    args = parser.parse_args()
    if args.batch_path:
        asyncio.run(run_batch_path(args.transactions))
    else:
        asyncio.run(run(args.rounds))


if __name__ == "__main__":
    main()
