"""`ledger serve --workers N` over a TigerBeetle cluster (TB_ADDRESSES) and the shared PostgreSQL
metadata store: durable transactions/s and RPC latency for N = 1, 2, ... on one port (SO_REUSEPORT).

Starts a throwaway PostgreSQL (tests/postgres_fixtures.py), then for each N a fresh database and
`ledger serve --workers N` (logs at WARNING, read model and gateway off), and drives it from loader
processes, each with its own connections (a local subchannel pool per channel, so the kernel spreads
them over the workers), PostTransactions of --batch transfer transactions per RPC. Loaders and
servers share the machine: on 2 cores the numbers say whether a second interpreter helps, no more.

    TB_ADDRESSES=3000 python -m scripts.bench_workers [--workers 1,2] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import subprocess
import time
import uuid
from typing import Any

import grpc

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPES_ALL, issue_token
from facade.settings import AuthSettings
from ledger_testkit.ports import free_port
from ledger_testkit.postgres import PostgresServer, start_postgres
from ledger_testkit.service import ledger_executable
from ledger_testkit.stats import percentile

LOADERS = 2
CONNECTIONS_PER_LOADER = 8
TB_REQUEST_TRANSFERS_MAX = 250
"""A development TigerBeetle (--development) takes at most 253 transfers per request."""
START_TIMEOUT_SECONDS = 60.0
STOP_SECONDS = 30


def metadata(client: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {issue_token(AuthSettings(), client, SCOPES_ALL)}"),)


def serve(server: PostgresServer, workers: int, port: int) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "LEDGER_ENGINE__BACKEND": "tigerbeetle",
        "LEDGER_ENGINE__TB_ADDRESSES": os.environ["TB_ADDRESSES"],
        "LEDGER_API__PORT": str(port),
        "LEDGER_API__HTTP_PORT": "-1",
        "LEDGER_API__METADATA_BACKEND": "postgres",
        "LEDGER_API__METADATA_DSN": server.create_database(),
        "LEDGER_API__BATCH_TRANSFERS_MAX": str(TB_REQUEST_TRANSFERS_MAX),
        "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
        "LEDGER_OBSERVABILITY__LOG_LEVEL": "WARNING",
        "LEDGER_CLICKHOUSE__SERVE_HISTORY": "false",
        "LEDGER_CONSISTENCY__INSTANCE_NAME": f"bench-{uuid.uuid4().hex[:12]}",
        "LEDGER_CONSISTENCY__JOIN_UNMARKED_ENGINE": "true",
    }
    ledger = ledger_executable()
    return subprocess.Popen([ledger, "serve", "--workers", str(workers)], env=env)


def setup(port: int, client: str) -> tuple[str, str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT_SECONDS)
        stub: Any = rpc.LedgerStub(channel)
        ids = []
        for reference, kind in (("from", pb.ACCOUNT_TYPE_OVERDRAFT_ALLOWED), ("to", pb.ACCOUNT_TYPE_NO_OVERDRAFT)):
            request = pb.CreateAccountRequest(currency="USD", external_reference=reference, owner=reference, type=kind)
            for _ in range(int(START_TIMEOUT_SECONDS * 10)):  # Workers 1.. may still be starting.
                try:
                    ids.append(str(stub.CreateAccount(request, metadata=metadata(client)).account_id))
                    break
                except grpc.RpcError:
                    time.sleep(0.1)
        return ids[0], ids[1]


def loader(  # noqa: PLR0913  A multiprocessing target: its args tuple.
    port: int, client: str, accounts: tuple[str, str], batch: int, seconds: float, out: Any
) -> None:
    async def run() -> tuple[int, list[float], int]:
        deadline = time.monotonic() + seconds
        latencies: list[float] = []
        done = errors = 0
        auth = metadata(client)

        async def connection(index: int) -> None:
            nonlocal done, errors
            options = [("grpc.use_local_subchannel_pool", 1)]  # Its own TCP connection: its own worker.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
                stub: Any = rpc.LedgerStub(channel)
                sequence = 0
                while time.monotonic() < deadline:
                    leg = pb.Leg(
                        type=pb.LEG_TYPE_TRANSFER,
                        from_account_id=accounts[0],
                        to_account_id=accounts[1],
                        amount="1",
                        currency="USD",
                    )
                    requests = [
                        pb.PostTransactionRequest(idempotency_key=f"{os.getpid()}-{index}-{sequence}-{i}", legs=[leg])
                        for i in range(batch)
                    ]
                    sequence += 1
                    started = time.perf_counter()
                    try:
                        response = await stub.PostTransactions(
                            pb.PostTransactionsRequest(transactions=requests), metadata=auth
                        )
                    except grpc.aio.AioRpcError:
                        errors += 1
                        continue
                    latencies.append(time.perf_counter() - started)
                    done += sum(1 for r in response.results if r.HasField("transaction"))
                    errors += sum(1 for r in response.results if not r.HasField("transaction"))

        await asyncio.gather(*(connection(i) for i in range(CONNECTIONS_PER_LOADER)))
        return done, latencies, errors

    out.put(asyncio.run(run()))


def measure(server: PostgresServer, workers: int, batch: int, seconds: float) -> str:
    port = free_port()
    process = serve(server, workers, port)
    try:
        client = f"bench-{uuid.uuid4().hex[:8]}"
        accounts = setup(port, client)
        queue: Any = multiprocessing.get_context("spawn").Queue()
        loaders = [
            multiprocessing.get_context("spawn").Process(
                target=loader, args=(port, client, accounts, batch, seconds, queue)
            )
            for _ in range(LOADERS)
        ]
        for started in loaders:
            started.start()
        results = [queue.get(timeout=seconds + START_TIMEOUT_SECONDS) for _ in loaders]
        for started in loaders:
            started.join()
        done = sum(r[0] for r in results)
        latencies = [latency for r in results for latency in r[1]]
        errors = sum(r[2] for r in results)
        return (
            f"workers {workers}: {done / seconds:8,.0f} tx/s, RPC ({batch} tx) p50 "
            f"{percentile(latencies, 0.5) * 1000:6.1f} ms, p99 {percentile(latencies, 0.99) * 1000:6.1f} ms, "
            f"errors {errors}"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(STOP_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=20, help="transactions per PostTransactions call")
    args = parser.parse_args()
    if not os.environ.get("TB_ADDRESSES"):
        raise SystemExit("bench_workers: set TB_ADDRESSES (a TigerBeetle cluster)")
    server = start_postgres()
    try:
        for workers in (int(n) for n in args.workers.split(",")):
            print(measure(server, workers, args.batch, args.seconds), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
