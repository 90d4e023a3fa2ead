"""Per-batch latency of the metadata store's `prepare` (idempotency lookup + durable intents, step 1 of
every batch) on SQLite and on PostgreSQL (one statement, one round trip, one commit per batch), for
batches of 100 and 8189 new one-leg transactions, and of the same batch again (all priors, no write).

PostgreSQL: a throwaway local server (tests/postgres_fixtures.py: initdb + pg_ctl, fsync on). Numbers
depend on the disk's fsync latency and the machine's load: compare the rows of one run.

    .venv/bin/python -m scripts.bench_metadata [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.domain.accounts import Currencies
from facade.domain.transactions import MappedTransaction, Metadata, PostRequest, map_post
from facade.metadata import MetadataStore, PostgresMetadataStore, SqliteMetadataStore
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(run(args.rounds))


if __name__ == "__main__":
    main()
