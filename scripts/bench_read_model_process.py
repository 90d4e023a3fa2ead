#!/usr/bin/env python3
"""The read model's process alone: CPU per change of its projection at a steady feed, by thread.

What `ledger serve`'s read-model child does with each batch change capture sends it
(projections._process._project_changes: chain, Native blocks or text rows, the inserts), fed here in
the same binary form at a steady rate, in this one process; merges run in the background as they do
there. Per-thread CPU from /proc/self/task/*/schedstat (ns): the calling thread (row building, chaining
and the queries chDB runs on it; chDB renames it "Unknown", shown here as "calling thread"), chDB's
ThreadPool (pipelines, parsing, writing parts) and MergeMutate (merges); the total is the process's own
(getrusage), which would also count threads that ended before the last sample (strace -f -e clone3: chDB
starts its threads once, none per batch). The changes look like bench_api.py's: single-phase transfers
between 50 accounts with the metadata the service records (transaction id, idempotency key, client, type,
source, correlation id, currency).

    python scripts/bench_read_model_process.py [--rate 10000] [--batch N] [--seconds 8] [--text]

--batch defaults to what the service's pacing makes of the rate (facade.changes.into_read_model): the
changes of one 0.3 s interval, or of one 0.5 s quiet wait when that is below 1,024 (3,000 at 10,000/s, 700
at 1,400/s; between ~2,000 and ~3,400 changes/s the service alternates the two, this takes the quiet one).

--text forces the TabSeparated path (projections._change_rows, what a replay takes) instead of Native blocks.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import tempfile
import time
from pathlib import Path

from facade.changes.into_read_model import (
    PROJECTION_BATCH_CHANGES_MAX,
    PROJECTION_POLL_INTERVAL_SECONDS,
    PROJECTION_QUIET_BATCH_CHANGES,
    PROJECTION_QUIET_WAIT_SECONDS,
)
from facade.engine.codec import encode_accounts, encode_transfers
from facade.engine.types import Account, ChangeEventType, Transfer
from ledger_events.chain import GENESIS
from ledger_events.gen.ledger.v1 import entries_pb2
from projections._change_columns import RECORDS_CHANGES_MIN
from projections._process import _Changes, _project_changes
from projections.client import ChdbClient
from projections.projector import Projector

ACCOUNTS = 50
LEDGER = 840
CODE = 1
TEXT_ONLY = 8190
"""A records threshold no batch reaches (at most 8189 changes): --text."""
BATCHES_MAX = 10_000
"""Bound on the batches prepared up front (prepared before measuring: their cost is the service's)."""


def threads_cpu_seconds() -> dict[str, tuple[str, float]]:
    """Thread name and CPU seconds by thread id, in this process (chDB renames the threads it runs
    queries on: a thread is matched by its id, and named as it is at the end)."""
    found: dict[str, tuple[str, float]] = {}
    task = Path(f"/proc/{os.getpid()}/task")
    for tid in os.listdir(task):
        try:
            name = (task / tid / "comm").read_text().strip()
            nanoseconds = int((task / tid / "schedstat").read_text().split()[0])
        except OSError:  # The thread ended.
            continue
        found[tid] = (name, nanoseconds / 1e9)
    return found


def process_cpu_seconds() -> float:
    """User and system CPU of the whole process, ended threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def batch(size: int, timestamp_first: int, id_first: int, rng: random.Random) -> _Changes:
    transfers: list[Transfer] = []
    accounts: list[Account] = []
    metadata: dict[int, bytes] = {}
    for i in range(size):
        debit = rng.randint(1, ACCOUNTS)
        credit = debit % ACCOUNTS + 1
        transfer_id = id_first + i
        transfers.append(
            Transfer(
                id=transfer_id,
                debit_account_id=debit,
                credit_account_id=credit,
                amount=1 + i % 1000,
                ledger=LEDGER,
                code=CODE,
                timestamp=timestamp_first + i,
            )
        )
        accounts.append(Account(id=debit, ledger=LEDGER, code=CODE, debits_posted=1000 + i, credits_posted=5 + i))
        accounts.append(Account(id=credit, ledger=LEDGER, code=CODE, debits_posted=1000 + i, credits_posted=7 + i))
        key = f"bench-b100x4-{i}-{transfer_id}"
        metadata[transfer_id] = entries_pb2.EntryMetadata(
            transaction_id=f"{transfer_id:032x}",
            idempotency_key=key,
            client_id="bench",
            transaction_type="transfer",
            source="bench",
            correlation_id=key,
            currency="USD",
        ).SerializeToString()
    return _Changes(
        timestamps=[timestamp_first + i for i in range(size)],
        types=[ChangeEventType.SINGLE_PHASE.value] * size,
        transfers=encode_transfers(transfers),
        accounts=encode_accounts(accounts),
        metadata=metadata,
    )


def paced_batch_changes(rate: float) -> int:
    """The batch the service's change capture reads at a steady `rate` (changes per second)."""
    assert rate > 0
    changes = round(rate * PROJECTION_POLL_INTERVAL_SECONDS)
    if changes < PROJECTION_QUIET_BATCH_CHANGES:
        changes = round(rate * PROJECTION_QUIET_WAIT_SECONDS)
    return max(1, min(changes, PROJECTION_BATCH_CHANGES_MAX))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10_000, help="changes per second fed")
    parser.add_argument("--batch", type=int, default=0, help="changes per batch (default: the service's pacing)")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--text", action="store_true", help="TabSeparated rows whatever the batch size")
    args = parser.parse_args()
    args.batch = args.batch or paced_batch_changes(args.rate)
    assert 0 < args.batch <= 8189 and args.rate > 0
    interval_seconds = args.batch / args.rate
    count = min(BATCHES_MAX, max(1, int(args.seconds / interval_seconds)))
    records_changes_min = TEXT_ONLY if args.text else RECORDS_CHANGES_MIN
    rng = random.Random(7)
    timestamp = time.time_ns()
    batches = [batch(args.batch, timestamp + n * args.batch, 1 + n * args.batch, rng) for n in range(count)]
    with tempfile.TemporaryDirectory(prefix="bench-read-model-") as directory:
        client = ChdbClient(Path(directory) / "clickhouse", "ledger")
        projector = Projector(client)
        link = GENESIS
        before = threads_cpu_seconds()
        process_before = process_cpu_seconds()
        started = time.perf_counter()
        busy_seconds = 0.0
        for n, changes in enumerate(batches):
            begun = time.perf_counter()
            link = _project_changes(projector, changes, link, records_changes_min=records_changes_min)
            busy_seconds += time.perf_counter() - begun
            time.sleep(max(0.0, started + (n + 1) * interval_seconds - time.perf_counter()))
        elapsed_seconds = time.perf_counter() - started
        after = threads_cpu_seconds()
        process_seconds = process_cpu_seconds() - process_before
        parts = client.query_rows(
            "SELECT table, count() FROM system.parts WHERE active AND database = currentDatabase() GROUP BY table"
        )
        client.close()
    changes_count = count * args.batch
    by_name: dict[str, float] = {}
    calling = str(os.getpid())  # The main thread's id: it runs the projection and chDB's queries.
    for tid, (found, seconds) in after.items():
        name = "calling thread" if tid == calling else found
        by_name[name] = by_name.get(name, 0.0) + seconds - before.get(tid, (name, 0.0))[1]
    total = process_seconds
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"{changes_count:,} changes in {count} batches of {args.batch:,} over {elapsed_seconds:.1f} s "
        f"({'text' if args.text else 'Native blocks'}): {total / changes_count * 1e6:.1f} µs CPU "
        f"a change, {total / elapsed_seconds:.0%} of a core, {busy_seconds / count * 1e3:.0f} ms a batch (wall)"
    )
    print(f"  {'threads sampled':<20}{sum(by_name.values()) / changes_count * 1e6:>8.1f} µs a change")
    for name, seconds in sorted(by_name.items(), key=lambda item: -item[1]):
        if seconds / changes_count * 1e6 >= 0.1:
            print(f"  {name:<20}{seconds / changes_count * 1e6:>8.1f} µs a change")
    print(f"active parts: {', '.join(f'{table} {parts_count}' for table, parts_count in parts)}")


if __name__ == "__main__":
    main()
