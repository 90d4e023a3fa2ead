#!/usr/bin/env python3
"""Benchmark the gRPC API end to end: durable transactions/s and latency percentiles.

Starts `ledger serve` (embedded engine, fresh temp data dir) in its own process and a no-op grpc.aio
server (same protocol, handler returns at once) as the baseline, then drives both from this process
with asyncio clients over loopback:

- unary:  PostTransaction, one transaction per RPC, at several concurrency levels;
- batch:  PostTransactions, N transactions per RPC;
- stream: StreamTransactions (bidirectional), one transaction per message.

Every write is acknowledged only after the engine and the metadata store fsynced it. Latency is per
RPC (per message for the stream). The no-op ratio says how much of the single-RPC cost is gRPC itself
on this machine. Client and server share the machine's 2 cores, so absolute numbers are a floor.

    python scripts/bench_api.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPE_READ, SCOPE_WRITE, SCOPES_ALL, issue_token
from facade.settings import AuthSettings

ACCOUNTS = 64
SERVER_START_TIMEOUT_SECONDS = 60.0
FLOOR_TX_PER_SECOND = 10_000
FLOOR_LATENCY_SECONDS_P99 = 0.100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


class NoopLedger(rpc.LedgerServicer):
    async def PostTransaction(self, _request: Any, _context: Any) -> pb.Transaction:  # noqa: N802
        return pb.Transaction()


async def wait_ready(channel: grpc.aio.Channel) -> None:
    await asyncio.wait_for(channel.channel_ready(), SERVER_START_TIMEOUT_SECONDS)


async def load(
    seconds: float, concurrency: int, call: Callable[[int, int], Awaitable[int]]
) -> tuple[float, list[float], int]:
    """Runs `concurrency` workers calling call(worker, n) for `seconds`; returns (tx/s, latencies, errors)."""
    latencies: list[float] = []
    done = 0
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        nonlocal done, errors
        n = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                completed = await call(index, n)  # Not `done += await ...`: that reads `done` before awaiting.
                done += completed
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.perf_counter() - started)
            n += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done / (time.perf_counter() - started), latencies, errors


def row(name: str, concurrency: int, rate: float, latencies: list[float], errors: int, ratio: str = "") -> str:
    return (
        f"{name:<34}{concurrency:>6}{rate:>12,.0f}{percentile(latencies, 0.5) * 1e3:>9.2f}"
        f"{percentile(latencies, 0.95) * 1e3:>9.2f}{percentile(latencies, 0.99) * 1e3:>9.2f}{errors:>8}{ratio:>10}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per case")
    parser.add_argument("--read-model", action="store_true", help="run the ClickHouse projector in the server too")
    args = parser.parse_args()
    seconds = args.seconds

    # Baseline: a no-op grpc.aio server in this process's event loop... would share the client's
    # loop, so it runs in a subprocess like the real one.
    noop_port = free_port()
    noop = subprocess.Popen([sys.executable, __file__, "--noop-server", str(noop_port)])
    data = Path(tempfile.mkdtemp(prefix="bench-api-"))
    port = free_port()
    env = dict(
        os.environ,
        LEDGER_API__PORT=str(port),
        LEDGER_ENGINE__DATA_DIR=str(data / "engine"),
        LEDGER_API__METADATA_DB=str(data / "metadata.sqlite3"),
        LEDGER_OBSERVABILITY__METRICS_PORT="-1",
        LEDGER_API__HTTP_PORT="-1",
        LEDGER_OBSERVABILITY__LOG_LEVEL="WARNING",
        LEDGER_CLICKHOUSE__CHDB_PATH=str(data / "clickhouse"),
        LEDGER_CLICKHOUSE__PROJECTOR_CHECKPOINT=str(data / "projector.json"),
        # The write path alone by default; --read-model adds the in-service projector's CPU.
        LEDGER_CLICKHOUSE__SERVE_HISTORY="true" if args.read_model else "false",
    )
    server = subprocess.Popen([shutil.which("ledger") or "ledger", "serve"], env=env)
    token = issue_token(AuthSettings(), "bench", SCOPES_ALL)
    floor_met: list[str] = []
    admin = (("authorization", f"Bearer {token}"),)
    # Writes as a payment service would: read + write only, so the account-ownership check runs.
    writer_token = issue_token(AuthSettings(), "bench", frozenset({SCOPE_READ, SCOPE_WRITE}))
    metadata = (("authorization", f"Bearer {writer_token}"),)
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{noop_port}") as noop_channel,
        ):
            await wait_ready(channel)
            await wait_ready(noop_channel)
            stub: Any = rpc.LedgerStub(channel)
            noop_stub: Any = rpc.LedgerStub(noop_channel)
            accounts = []
            for i in range(ACCOUNTS):
                account = await stub.CreateAccount(
                    pb.CreateAccountRequest(
                        currency="USD", external_reference=f"acct-{i}", type=pb.ACCOUNT_TYPE_OVERDRAFT_ALLOWED
                    ),
                    metadata=admin,
                )
                accounts.append(account.account_id)
            case = 0

            def transaction(key: str, n: int) -> pb.PostTransactionRequest:
                source, destination = accounts[n % ACCOUNTS], accounts[(n * 7 + 1) % ACCOUNTS]
                if source == destination:
                    destination = accounts[(n + 1) % ACCOUNTS]
                return pb.PostTransactionRequest(
                    idempotency_key=key,
                    legs=[
                        pb.Leg(
                            type=pb.LEG_TYPE_TRANSFER, from_account_id=source, to_account_id=destination,
                            amount=str(1 + n % 1000), currency="USD",
                        )
                    ],
                    metadata=pb.TransactionMetadata(source="bench", correlation_id=key),
                )  # fmt: skip

            header = f"{'case':<34}{'conc':>6}{'tx/s':>12}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
            print(f"{header}{'errors':>8}{'vs no-op':>10}")
            print("-" * 97)
            for concurrency in (16, 64, 256):
                case += 1

                async def noop_call(worker: int, n: int) -> int:
                    await noop_stub.PostTransaction(transaction(f"noop-{worker}-{n}", n), metadata=metadata)
                    return 1

                async def unary_call(worker: int, n: int, case: int = case) -> int:
                    await stub.PostTransaction(transaction(f"u{case}-{worker}-{n}", n + worker), metadata=metadata)
                    return 1

                noop_rate, noop_lat, noop_errors = await load(seconds, concurrency, noop_call)
                rate, lat, errors = await load(seconds, concurrency, unary_call)
                print(row("no-op grpc.aio unary (baseline)", concurrency, noop_rate, noop_lat, noop_errors))
                print(row("PostTransaction (1 tx/RPC)", concurrency, rate, lat, errors, f"{rate / noop_rate:.2f}x"))
            for batch_size, concurrency in ((100, 4), (100, 16), (1000, 4)):
                case += 1

                async def batch_call(worker: int, n: int, case: int = case, size: int = batch_size) -> int:
                    request = pb.PostTransactionsRequest(
                        transactions=[transaction(f"b{case}-{worker}-{n}-{i}", n * size + i) for i in range(size)]
                    )
                    response = await stub.PostTransactions(request, metadata=metadata)
                    return sum(1 for r in response.results if r.HasField("transaction"))

                rate, lat, errors = await load(seconds, concurrency, batch_call)
                print(row(f"PostTransactions ({batch_size} tx/RPC)", concurrency, rate, lat, errors))
                if rate >= FLOOR_TX_PER_SECOND and percentile(lat, 0.99) < FLOOR_LATENCY_SECONDS_P99 and not errors:
                    floor_met.append(f"{batch_size} tx/RPC at concurrency {concurrency}: {rate:,.0f} tx/s")
            for streams in (4, 16):
                case += 1
                stream_latencies: list[float] = []
                stream_done = 0
                stop_at = time.perf_counter() + seconds

                async def run_stream(
                    worker: int,
                    case: int = case,
                    stop_at: float = stop_at,
                    stream_latencies: list[float] = stream_latencies,
                ) -> None:
                    nonlocal stream_done
                    sent: asyncio.Queue[float] = asyncio.Queue()

                    async def requests() -> AsyncIterator[pb.PostTransactionRequest]:
                        n = 0
                        while time.perf_counter() < stop_at:
                            while sent.qsize() > 512:  # Bounded read-ahead, like a real client.
                                await asyncio.sleep(0.001)
                            await sent.put(time.perf_counter())
                            yield transaction(f"s{case}-{worker}-{n}", n + worker)
                            n += 1

                    async for result in stub.StreamTransactions(requests(), metadata=metadata):
                        stream_latencies.append(time.perf_counter() - sent.get_nowait())
                        stream_done += 1 if result.HasField("transaction") else 0

                started = time.perf_counter()
                await asyncio.gather(*(run_stream(i) for i in range(streams)))
                rate = stream_done / (time.perf_counter() - started)
                print(row("StreamTransactions (1 tx/msg)", streams, rate, stream_latencies, 0))
    finally:
        server.terminate()
        noop.terminate()
        server.wait(30)
        noop.wait(30)
        shutil.rmtree(data, ignore_errors=True)
    print()
    verdict = ("met by " + "; ".join(floor_met)) if floor_met else "NOT met"
    floor = f"batched >= {FLOOR_TX_PER_SECOND:,} tx/s with p99 < {FLOOR_LATENCY_SECONDS_P99 * 1e3:.0f} ms"
    print(f"Floor ({floor}): {verdict}")
    print("Durable: every acknowledged transaction was fsynced by the engine journal and the metadata store.")
    print("Client and servers share this machine's cores; conc = concurrent RPCs (streams for the stream rows).")


async def noop_server(port: int) -> None:
    server = grpc.aio.server()
    rpc.add_LedgerServicer_to_server(NoopLedger(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--noop-server":
        asyncio.run(noop_server(int(sys.argv[2])))
    else:
        asyncio.run(main())
