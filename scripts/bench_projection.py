#!/usr/bin/env python3
"""Benchmark the ClickHouse projection: lag under a steady transfer load. Goal: p99 < 1 s at 10,000 tx/s.

A producer posts transfers into the embedded engine at a steady rate (a batch every 10 ms, sized
from the time elapsed, so the offered rate holds even when a batch runs late). Change capture reads
the engine's change feed into the projector (chDB, in-process) exactly as in production, with no
Kafka. Lag is measured per change: the wall clock when the projector's insert returned (the row is
queryable from then on) minus the change's engine timestamp (the engine's realtime clock at
commit). A probe thread also queries the newest projected timestamp every 100 ms, as a reader
would, to confirm the rows are visible. The first `--warmup-seconds` are excluded.

    python scripts/bench_projection.py [--rate 10000] [--seconds 20] [--accounts 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from facade.changes.into_read_model import change_capture
from facade.changes.poller import ChangeCapture
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import BATCH_EVENTS_MAX, Account, CreateTransferStatus, Transfer
from ledger_events.gen.ledger.v1 import entries_pb2
from ledger_testkit.stats import percentile
from projections.client import ChdbClient
from projections.projector import Projector
from projections.queries import projected_timestamp

LEDGER = 840
CODE = 1
PRODUCER_INTERVAL_SECONDS = 0.01
PROBE_INTERVAL_SECONDS = 0.1
LAG_GOAL_P99_SECONDS = 1.0
SAMPLES_MAX = 2_000_000
"""Bound on recorded lag samples (20 s at 10,000 tx/s is 200,000)."""


class MeasuringSink:
    """The projector, with the lag of every change recorded when its insert returns."""

    def __init__(self, projector: Projector, measure_after_ns: int) -> None:
        self.projector = projector
        self.measure_after_ns = measure_after_ns
        self.lags_seconds: list[float] = []
        self.changes = 0

    async def publish(self, entries: Sequence[entries_pb2.LedgerEntry]) -> None:
        await self.projector.publish(entries)
        now = time.time_ns()
        for entry in entries[::2]:  # Two entries per change; one lag per change.
            self.changes += 1
            if entry.engine_timestamp >= self.measure_after_ns and len(self.lags_seconds) < SAMPLES_MAX:
                self.lags_seconds.append((now - entry.engine_timestamp) / 1e9)


async def produce(engine: EmbeddedEngine, rate: float, accounts: int, stop_at: float, posted: list[int]) -> None:
    rng = random.Random(7)
    next_id = 1
    started = time.perf_counter()
    deadline = started
    while True:
        now = time.perf_counter()
        if now >= stop_at:
            return
        due = int((now - started) * rate) - posted[0]
        count = min(max(due, 0), BATCH_EVENTS_MAX)
        if count:
            batch = []
            for _ in range(count):
                debit = rng.randint(1, accounts)
                credit = rng.randint(1, accounts - 1)
                credit = credit + 1 if credit >= debit else credit
                batch.append(
                    Transfer(
                        id=next_id,
                        debit_account_id=debit,
                        credit_account_id=credit,
                        amount=rng.randint(1, 10_000),
                        ledger=LEDGER,
                        code=CODE,
                    )
                )
                next_id += 1
            results = await engine.create_transfers(batch)
            assert all(r.status == CreateTransferStatus.CREATED for r in results)
            posted[0] += count
        deadline += PRODUCER_INTERVAL_SECONDS
        await asyncio.sleep(max(0.0, deadline - time.perf_counter()))


def probe(client: ChdbClient, stop: threading.Event, measure_after_ns: int, lags: list[float]) -> None:
    while not stop.wait(PROBE_INTERVAL_SECONDS):
        newest = projected_timestamp(client)
        if newest >= measure_after_ns:
            lags.append((time.time_ns() - newest) / 1e9)


async def run(rate: float, seconds: float, warmup_seconds: float, accounts: int, directory: Path) -> None:
    engine = await EmbeddedEngine.open(directory / "engine")
    for first in range(1, accounts + 1, BATCH_EVENTS_MAX):
        last = min(accounts, first + BATCH_EVENTS_MAX - 1)
        await engine.create_accounts([Account(id=i, ledger=LEDGER, code=CODE) for i in range(first, last + 1)])
    client = ChdbClient(directory / "clickhouse", "ledger")
    projector = Projector(client)
    measure_after_ns = time.time_ns() + int(warmup_seconds * 1e9)
    sink = MeasuringSink(projector, measure_after_ns)
    checkpoint = directory / "projector.json"
    change_capture(engine, projector, checkpoint)  # Writes the resume checkpoint from the read model.
    capture = ChangeCapture(engine, sink, checkpoint)
    stop_capture = asyncio.Event()
    stop_probe = threading.Event()
    probe_lags: list[float] = []
    prober = threading.Thread(target=probe, args=(client, stop_probe, measure_after_ns, probe_lags), daemon=True)
    capture_task = asyncio.create_task(capture.run(stop_capture))
    prober.start()
    posted = [0]
    started = time.perf_counter()
    await produce(engine, rate, accounts, started + warmup_seconds + seconds, posted)
    produced_seconds = time.perf_counter() - started
    # Drain: wait until everything posted is projected (bounded).
    drain_deadline = time.perf_counter() + 60
    while sink.changes < posted[0] and time.perf_counter() < drain_deadline:
        await asyncio.sleep(0.01)
    stop_capture.set()
    await capture_task
    stop_probe.set()
    prober.join()
    client.close()
    await engine.close()

    lags = sink.lags_seconds
    stats = projector.stats
    print(f"offered {rate:,.0f} tx/s for {seconds:.0f} s (+{warmup_seconds:.0f} s warm-up), {accounts:,} accounts")
    print(f"posted {posted[0]:,} transfers in {produced_seconds:.1f} s = {posted[0] / produced_seconds:,.0f} tx/s")
    mean_batch_changes = stats.entries_received / 2 / max(1, stats.batches)
    print(
        f"projected {sink.changes:,} changes in {stats.batches:,} batches "
        f"(mean {mean_batch_changes:,.0f} changes), {stats.rows_inserted:,} rows"
    )
    print()
    print(f"{'lag (s)':<28}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}{'mean':>9}{'samples':>10}")
    for name, samples in (("row queryable (per change)", lags), ("probe: newest visible", probe_lags)):
        if not samples:
            print(f"{name:<28} no samples")
            continue
        print(
            f"{name:<28}{percentile(samples, 0.50):>9.3f}{percentile(samples, 0.95):>9.3f}"
            f"{percentile(samples, 0.99):>9.3f}{max(samples):>9.3f}{statistics.fmean(samples):>9.3f}{len(samples):>10,}"
        )
    if lags:
        p99 = percentile(lags, 0.99)
        verdict = "met" if p99 < LAG_GOAL_P99_SECONDS and posted[0] / produced_seconds >= 0.95 * rate else "NOT met"
        print(f"\ngoal: lag p99 < {LAG_GOAL_P99_SECONDS:.0f} s at {rate:,.0f} tx/s: {verdict} (p99 {p99:.3f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=10_000, help="transfers per second offered")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warmup-seconds", type=float, default=2)
    parser.add_argument("--accounts", type=int, default=10_000)
    args = parser.parse_args()
    assert args.accounts >= 2
    with tempfile.TemporaryDirectory(prefix="bench-projection-") as directory:
        asyncio.run(run(args.rate, args.seconds, args.warmup_seconds, args.accounts, Path(directory)))


if __name__ == "__main__":
    main()
