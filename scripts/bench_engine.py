#!/usr/bin/env python3
"""Benchmark the embedded engine: durable transfers/s and per-batch latency percentiles.

Cases: batch sizes 1, 100 and 8189, with uniformly random accounts and with a hot account (90% of
transfers touch one account). Every batch is journaled and fdatasynced before the next starts, as in
production. Baselines measured in the same run, so ratios hold on a noisy machine:
- `fdatasync`: one 128-byte append + fdatasync per op on the same disk (the floor for batch size 1);
- `memory`: the state machine alone, no journal (the ceiling for large batches).

    python scripts/bench_engine.py [--seconds 3] [--accounts 10000] [--sizes 1,100,8189] [--in-flight 1]

`--in-flight 2` keeps two batches submitted at once, as the group committer does (facade.batcher,
BATCHES_IN_FLIGHT_MAX): the engine's append pipeline overlaps one batch's header-copy fdatasync with the
next batch's record (facade.engine.journal); with one in flight there is nothing to overlap.
`--fdatasync-extra-ms X` models a disk whose flush is slower than this machine's (every fdatasync, the
baseline's too, sleeps X ms after the real call; the sleep releases the GIL as the real call does): a
model, labelled as such in the output, not a measurement of a real device.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from facade.engine.embedded import EmbeddedEngine
from facade.engine.state_machine import StateMachine
from facade.engine.types import (
    BATCH_EVENTS_MAX,
    Account,
    CreateTransferStatus,
    Transfer,
)
from facade.runtime import tune_gc
from ledger_testkit.stats import percentile

LEDGER = 840
CODE = 1
BATCHES_MAX = 100_000
"""Upper bound on batches per case, whatever --seconds says."""


def make_batch(rng: random.Random, size: int, accounts: int, hot: bool, next_id: list[int]) -> list[Transfer]:
    batch = []
    for _ in range(size):
        debit = rng.randint(1, accounts)
        credit = rng.randint(1, accounts - 1)
        credit = credit + 1 if credit >= debit else credit
        if hot and rng.random() < 0.9:
            if rng.random() < 0.5:
                debit, credit = 1, (credit if credit != 1 else 2)
            else:
                debit, credit = (debit if debit != 1 else 2), 1
        next_id[0] += 1
        batch.append(
            Transfer(
                id=next_id[0],
                debit_account_id=debit,
                credit_account_id=credit,
                amount=rng.randint(1, 10_000),
                ledger=LEDGER,
                code=CODE,
            )
        )
    return batch


def bench_fdatasync(directory: Path, seconds: float) -> tuple[float, list[float]]:
    path = directory / "fdatasync.bench"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    record = b"\0" * 128
    latencies: list[float] = []
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds and len(latencies) < BATCHES_MAX:
            t0 = time.perf_counter()
            os.write(fd, record)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return len(latencies) / (time.perf_counter() - start), latencies


def bench_memory(accounts: int, size: int, hot: bool, seconds: float) -> float:
    state = StateMachine()
    for first in range(1, accounts + 1, BATCH_EVENTS_MAX):  # One batch holds at most BATCH_EVENTS_MAX events.
        last = min(accounts, first + BATCH_EVENTS_MAX - 1)
        state.create_accounts(
            [Account(id=i, ledger=LEDGER, code=CODE) for i in range(first, last + 1)],
            state.prepare(last - first + 1, time.time_ns()),
        )
    rng = random.Random(7)
    next_id = [10**9]
    done = 0
    elapsed = 0.0
    while elapsed < seconds:
        batch = make_batch(rng, size, accounts, hot, next_id)
        t0 = time.perf_counter()
        state.create_transfers(batch, state.prepare(len(batch), time.time_ns()))
        elapsed += time.perf_counter() - t0
        done += len(batch)
    return done / elapsed


async def bench_durable(  # noqa: PLR0913  A benchmark case's parameters, each a column of its row.
    directory: Path, accounts: int, size: int, hot: bool, seconds: float, in_flight: int = 1,
    append_pipeline: bool = False,
) -> tuple[float, list[float], float]:  # fmt: skip
    """(transfers/s, batch latencies, process CPU seconds per batch: every thread, the engine's and the
    journal's included)."""
    # Passed only when asked for: an older tree's engine (a same-run baseline) has no such option.
    engine = await (
        EmbeddedEngine.open(directory, append_pipeline=True) if append_pipeline else EmbeddedEngine.open(directory)
    )
    try:
        for first in range(1, accounts + 1, BATCH_EVENTS_MAX):
            last = min(accounts, first + BATCH_EVENTS_MAX - 1)
            await engine.create_accounts([Account(id=i, ledger=LEDGER, code=CODE) for i in range(first, last + 1)])
        rng = random.Random(42)
        next_id = [10**12]
        # Batches are generated up front so the clock measures the engine, not the generator.
        batches_count = max(1, min(BATCHES_MAX, int(seconds * 200_000 / size) + 1))
        batches = [make_batch(rng, size, accounts, hot, next_id) for _ in range(min(batches_count, 64))]
        latencies: list[float] = []
        done = 0
        start = time.perf_counter()
        cpu_start = time.process_time()
        index = 0

        async def submitter() -> None:
            nonlocal done, index
            while time.perf_counter() - start < seconds and len(latencies) < BATCHES_MAX:
                batch = batches[index % len(batches)]
                if index >= len(batches):
                    batch = make_batch(rng, size, accounts, hot, next_id)
                index += 1
                t0 = time.perf_counter()
                results = await engine.create_transfers(batch)
                latencies.append(time.perf_counter() - t0)
                assert all(r.status == CreateTransferStatus.CREATED for r in results)
                done += len(batch)

        await asyncio.gather(*(submitter() for _ in range(in_flight)))
        elapsed = time.perf_counter() - start
        return done / elapsed, latencies, (time.process_time() - cpu_start) / len(latencies)
    finally:
        await engine.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per case")
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="data directory (default: a temp dir)")
    parser.add_argument("--sizes", default=f"1,100,{BATCH_EVENTS_MAX}", help="batch sizes, comma-separated")
    parser.add_argument("--in-flight", type=int, default=1, help="batches submitted at once (group committer: 2)")
    parser.add_argument(
        "--append-pipeline", action="store_true", help="the engine's append pipeline on (engine.append_pipeline)"
    )
    parser.add_argument(
        "--fdatasync-extra-ms", type=float, default=0.0, help="model a slower disk: sleep this long per fdatasync"
    )
    args = parser.parse_args()
    tune_gc()  # As the service does at start-up.
    if args.fdatasync_extra_ms > 0:
        fdatasync, extra_seconds = os.fdatasync, args.fdatasync_extra_ms / 1e3

        def slow_fdatasync(fd: int) -> None:
            fdatasync(fd)
            time.sleep(extra_seconds)

        os.fdatasync = slow_fdatasync  # type: ignore[assignment]  # The model wraps ints only.
        print(f"MODEL: every fdatasync takes {args.fdatasync_extra_ms} ms longer than this disk's")
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-engine-"))
    root.mkdir(parents=True, exist_ok=True)

    fsync_rate, fsync_latencies = bench_fdatasync(root, min(args.seconds, 2.0))
    fsync_p50_ms = statistics.median(fsync_latencies) * 1e3
    print(f"baseline fdatasync: {fsync_rate:,.0f} appends/s, p50 {fsync_p50_ms:.2f} ms")
    print()
    header = (
        f"{'case':<22}{'batch':>6}{'transfers/s':>14}{'vs memory':>11}{'batch p50 ms':>14}{'p99 ms':>9}"
        f"{'CPU µs/batch':>14}"
    )
    print(header)
    print("-" * len(header))
    sizes = [int(size) for size in args.sizes.split(",")]
    assert all(0 < size <= BATCH_EVENTS_MAX for size in sizes) and args.in_flight >= 1
    for hot in (False, True):
        for size in sizes:
            case = "hot account (90%)" if hot else "uniform accounts"
            directory = root / f"{'hot' if hot else 'uniform'}-{size}"
            rate, latencies, cpu_seconds = await bench_durable(
                directory, args.accounts, size, hot, args.seconds, args.in_flight, args.append_pipeline
            )
            memory_rate = bench_memory(args.accounts, size, hot, min(args.seconds, 1.0))
            print(
                f"{case:<22}{size:>6}{rate:>14,.0f}{rate / memory_rate:>10.2f}x"
                f"{percentile(latencies, 0.5) * 1e3:>14.2f}{percentile(latencies, 0.99) * 1e3:>9.2f}"
                f"{cpu_seconds * 1e6:>14,.0f}"
            )
    print()
    print("transfers/s: durable (fdatasync per batch) through EmbeddedEngine; vs memory: ratio to the")
    print("state machine alone on the same batches; batch latency: one create_transfers call;")
    print(f"batches in flight: {args.in_flight}; append pipeline {'on' if args.append_pipeline else 'off'}.")


if __name__ == "__main__":
    asyncio.run(main())
