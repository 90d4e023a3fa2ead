#!/usr/bin/env python3
"""Benchmark queries by metadata (projections.metadata_queries, History ListTransactions / ListAccounts)
over a read model of 10 million rows.

Loading: the rows are generated inside chDB (`INSERT INTO transactions SELECT ... FROM numbers(...)`) in
the read model's own schema (projections.schema.create_tables: the same table, order key and skip
indexes the service uses) rather than posted through the service: this measures reads, and posting
10 million transactions through the engine would take far longer than the benchmark budget. Every row
carries three labels (`order` unique, `merchant` one of 10,000, `campaign` one of 4), a source (one of
5), a correlation id shared by 3 rows, an amount spread over 1..1,000,000 minor units, and engine
timestamps 1 ms apart (10 million rows: ~2.8 hours of traffic).

Then each query shape runs QUERIES times with random parameters through `list_transactions` /
`list_accounts` on a ChdbClient (what the service's read-model process runs; the gRPC/HTTP edge and the
pipe to the read-model process add their own, small, cost) and reports p50/p99:

    rare label        labels {order: o-N}: one match among 10M (bloom filter on the label values)
    merchant label    labels {merchant: m-N}: 1,000 matches spread over the table, first page of 100
    two labels        {campaign, merchant}: every pair must match
    source + 1 h      source and a one-hour time range (primary key range + source)
    amount range      amount within a narrow band (no index: scanned until the page is full)
    correlation id    3 matches (bloom filter)
    next page         the page after a first page of {campaign: C} from a random time (cursor)
    accounts/label    ListAccounts of the accounts with changes labelled {merchant: m-N} (the label index)

    python scripts/bench_label_filter.py [--rows 10000000] [--queries 50] [--dir DIR] [--keep]

The machine is shared (2 cores, other work running): the numbers are "loaded".
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from projections.client import ChdbClient
from projections.metadata_queries import TransactionFilter, list_accounts, list_transactions
from projections.schema import create_tables

ROWS_MAX = 50_000_000
CHUNK_ROWS = 1_000_000
"""Rows per INSERT ... SELECT: bounded memory per statement."""
MERCHANTS = 10_000
CAMPAIGNS = ("spring", "summer", "autumn", "winter")
SOURCES = ("pos", "web", "api", "batch", "psp")
TIMESTAMP_START = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
TIMESTAMP_STEP = 1_000_000  # 1 ms between changes
ACCOUNTS = 100_000
HOUR_NS = 3_600 * 1_000_000_000
AMOUNT_BAND = 100
PAGE_SIZE = 100

# Constants and `numbers()` only: the generator's SQL holds no outside text.
_TRANSACTIONS = f"""
INSERT INTO transactions (engine_timestamp, change, debit_account_id, credit_account_id, amount, transfer_id, ledger,
    code, transfer_timestamp, chain_sequence, has_metadata, transaction_id, client_id, transaction_type, source,
    correlation_id, labels, currency)
SELECT {TIMESTAMP_START} + number * {TIMESTAMP_STEP}, 'SINGLE_PHASE', number % {ACCOUNTS} + 1,
    (number * 7 + 3) % {ACCOUNTS} + 1, cityHash64(number) % 1000000 + 1, number + 1, 840, 1,
    {TIMESTAMP_START} + number * {TIMESTAMP_STEP}, number + 1, true, concat('tx-', toString(number)), 'client-a',
    'TRANSFER', [{", ".join(f"'{s}'" for s in SOURCES)}][number % {len(SOURCES)} + 1],
    concat('corr-', toString(intDiv(number, 3))),
    map('order', concat('o-', toString(number)), 'merchant', concat('m-', toString(number % {MERCHANTS})),
        'campaign', [{", ".join(f"'{c}'" for c in CAMPAIGNS)}][intDiv(number, 7) % {len(CAMPAIGNS)} + 1]),
    'USD'
FROM numbers({{start:UInt64}}, {{count:UInt64}})"""


def load(client: ChdbClient, statement: str, rows: int, table: str) -> float:
    started = time.perf_counter()
    for start in range(0, rows, CHUNK_ROWS):
        client.command(statement, {"start": start, "count": min(CHUNK_ROWS, rows - start)})
    seconds = time.perf_counter() - started
    print(f"loaded {rows:,} rows into {table} in {seconds:.1f} s", flush=True)
    return seconds


def timed(name: str, queries: int, run: Callable[[random.Random], int]) -> None:
    rng = random.Random(name)
    run(rng)  # Warm the caches once (marks, index granules), as a running service has them.
    latencies_ms: list[float] = []
    found = 0
    for _ in range(queries):
        started = time.perf_counter()
        found += run(rng)
        latencies_ms.append((time.perf_counter() - started) * 1000)
    latencies_ms.sort()
    p50 = statistics.median(latencies_ms)
    p99 = latencies_ms[min(len(latencies_ms) - 1, int(len(latencies_ms) * 0.99))]
    worst = latencies_ms[-1]
    print(f"{name:16} p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  max {worst:7.1f} ms  rows/query {found / queries:6.1f}")


_PARTS = "SELECT table, count() FROM system.parts WHERE active AND database = 'ledger' GROUP BY table"


def shapes(client: ChdbClient, rows: int) -> list[tuple[str, Callable[[random.Random], int]]]:
    """The query shapes: each takes a seeded random source and returns how many rows it found."""
    span = rows * TIMESTAMP_STEP

    def page(query: TransactionFilter) -> int:
        return len(list_transactions(client, query, page_size=PAGE_SIZE).transactions)

    def merchant(r: random.Random) -> tuple[str, str]:
        return ("merchant", f"m-{r.randrange(MERCHANTS)}")

    def rare_label(r: random.Random) -> int:
        return page(TransactionFilter(labels=(("order", f"o-{r.randrange(rows)}"),)))

    def merchant_label(r: random.Random) -> int:
        return page(TransactionFilter(labels=(merchant(r),)))

    def two_labels(r: random.Random) -> int:
        return page(TransactionFilter(labels=(("campaign", r.choice(CAMPAIGNS)), merchant(r))))

    def source_hour(r: random.Random) -> int:
        start = TIMESTAMP_START + r.randrange(max(1, span - HOUR_NS))
        return page(TransactionFilter(source=r.choice(SOURCES), timestamp_from=start, timestamp_to=start + HOUR_NS))

    def amount_band(r: random.Random) -> int:
        low = r.randrange(1, 1_000_000 - AMOUNT_BAND)
        return page(TransactionFilter(amount_min=low, amount_max=low + AMOUNT_BAND))

    def correlation(r: random.Random) -> int:
        return page(TransactionFilter(correlation_id=f"corr-{r.randrange(max(1, rows // 3))}"))

    def next_page(r: random.Random) -> int:
        start = TIMESTAMP_START + r.randrange(span)
        query = TransactionFilter(labels=(("campaign", r.choice(CAMPAIGNS)),), timestamp_from=start)
        first = list_transactions(client, query, page_size=PAGE_SIZE)
        if not first.next_page_token:
            return 0
        return len(list_transactions(client, query, page_size=PAGE_SIZE, page_token=first.next_page_token).transactions)

    def accounts(r: random.Random) -> int:
        return len(list_accounts(client, TransactionFilter(labels=(merchant(r),)), page_size=PAGE_SIZE).accounts)

    return [
        ("rare label", rare_label),
        ("merchant label", merchant_label),
        ("two labels", two_labels),
        ("source + 1 h", source_hour),
        ("amount range", amount_band),
        ("correlation id", correlation),
        ("next page", next_page),
        ("accounts/label", accounts),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000, help=f"transactions rows (1..{ROWS_MAX})")
    parser.add_argument("--queries", type=int, default=50, help="timed queries per shape")
    parser.add_argument("--dir", type=Path, default=None, help="chDB directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the directory (reuse it with --dir and --rows 0)")
    args = parser.parse_args()
    assert 0 <= args.rows <= ROWS_MAX and args.queries >= 1
    directory = args.dir or Path(tempfile.mkdtemp(prefix="bench-label-filter-"))
    client = ChdbClient(directory, "ledger")
    try:
        create_tables(client)
        if args.rows:
            load(client, _TRANSACTIONS, args.rows, "transactions")
        # Background merges of the freshly loaded parts would compete with the timed queries for the
        # same 2 cores: stopped while timing (the queries read the parts as loaded).
        client.command("SYSTEM STOP MERGES")
        rows = int(str(client.query_rows("SELECT count() FROM transactions")[0][0]))
        parts = client.query_rows(_PARTS)
        print(f"transactions: {rows:,} rows; active parts: { {str(t): int(str(n)) for t, n in parts} }")
        assert rows > 0
        for name, run in shapes(client, rows):
            timed(name, args.queries, run)
    finally:
        client.close()
        if not args.keep and args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
