#!/usr/bin/env python3
"""SQL endpoint latency (facade.api.sql) for a typical statement query, and chDB opened directly as the
baseline, in one run.

`ledger serve` starts in a fresh working directory on the embedded defaults scripts/run.sh uses (engine
journal, chDB read model in its own process, SQL endpoint) with free loopback ports; transactions are
posted over gRPC (PostTransactions, 1,000 per call): `--account-entries` of them to one merchant account,
the rest between customers. Once the read model holds them all, clickhouse-connect (with a development
token as the password, as an analyst would) runs the statement query QUERIES times:

    SELECT engine_timestamp, side, amount, signed_amount, counterparty_account_id, transaction_id, description
    FROM entries WHERE account_id = {account:UInt128}
      AND engine_timestamp >= {from:UInt64} AND engine_timestamp < {to:UInt64}   -- the last 30 days
    ORDER BY engine_timestamp

Then the service stops and the same query runs on the same chDB directory opened in this process
(projections.client.ChdbClient: JSONCompact parsed into rows, as clickhouse-connect parses its Native):
the difference is what the endpoint costs (HTTP, auth, the statement checks, the pipe to the read-model
process).

    python scripts/bench_sql.py [--transactions 20000] [--account-entries 2000] [--queries 200]

The machine is shared (2 cores, other work running): the numbers are "loaded".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import clickhouse_connect
import grpc

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPES_ALL, issue_token
from facade.settings import AuthSettings
from projections.client import ChdbClient

BATCH_TRANSACTIONS_MAX = 1000
CUSTOMERS = 20
START_TIMEOUT_SECONDS = 120.0
PROJECTION_TIMEOUT_SECONDS = 300.0
STOP_TIMEOUT_SECONDS = 60.0
MONTH_NS = 30 * 86_400 * 1_000_000_000
STATEMENT = """
SELECT engine_timestamp, side, amount, signed_amount, counterparty_account_id, transaction_id, description
FROM entries
WHERE account_id = {account:UInt128} AND engine_timestamp >= {from:UInt64} AND engine_timestamp < {to:UInt64}
ORDER BY engine_timestamp"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def percentiles(name: str, latencies_ms: list[float], rows: int) -> None:
    ordered = sorted(latencies_ms)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]

    p50 = statistics.median(ordered)
    print(f"{name:24} p50 {p50:7.2f} ms  p95 {at(0.95):7.2f} ms  p99 {at(0.99):7.2f} ms  ({rows} rows per query)")


def timed(queries: int, run: Callable[[], int]) -> tuple[list[float], int]:
    rows = run()  # Warm-up: connection, marks cache.
    latencies_ms = []
    for _ in range(queries):
        started = time.perf_counter()
        found = run()
        latencies_ms.append((time.perf_counter() - started) * 1000)
        assert found == rows
    return latencies_ms, rows


async def post_workload(grpc_port: int, token: str, transactions: int, account_entries: int) -> str:
    """Creates the accounts and posts the transactions; returns the merchant's account id."""
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), START_TIMEOUT_SECONDS)
        stub = rpc.LedgerStub(channel)

        async def account(reference: str, kind: pb.AccountType.ValueType) -> str:
            request = pb.CreateAccountRequest(currency="USD", external_reference=reference, owner=reference, type=kind)
            created = await stub.CreateAccount(request, metadata=metadata)
            return str(created.account_id)

        merchant = await account("merchant", pb.ACCOUNT_TYPE_NO_OVERDRAFT)
        customers = [await account(f"customer-{n}", pb.ACCOUNT_TYPE_OVERDRAFT_ALLOWED) for n in range(CUSTOMERS)]
        every = max(1, transactions // max(1, account_entries))
        requests = []
        for n in range(transactions):
            source = customers[n % CUSTOMERS]
            destination = merchant if n % every == 0 else customers[(n + 1) % CUSTOMERS]
            leg = pb.Leg(
                type=pb.LEG_TYPE_TRANSFER,
                from_account_id=source,
                to_account_id=destination,
                amount=str(100 + n % 997),
                currency="USD",
            )
            meta = pb.TransactionMetadata(source="bench", description=f"payment {n}")
            requests.append(pb.PostTransactionRequest(idempotency_key=f"bench-{n}", legs=[leg], metadata=meta))
        for start in range(0, len(requests), BATCH_TRANSACTIONS_MAX):
            batch = pb.PostTransactionsRequest(transactions=requests[start : start + BATCH_TRANSACTIONS_MAX])
            response = await stub.PostTransactions(batch, metadata=metadata)
            assert all(result.HasField("transaction") for result in response.results)
    return merchant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=20_000, help="transactions posted in all")
    parser.add_argument("--account-entries", type=int, default=2_000, help="of them, to the merchant account")
    parser.add_argument("--queries", type=int, default=200, help="timed statement queries per client")
    args = parser.parse_args()
    assert 1 <= args.account_entries <= args.transactions and args.queries >= 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-sql-"))
    grpc_port, sql_port = free_port(), free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")} | {
        "LEDGER_API__PORT": str(grpc_port),
        "LEDGER_API__SQL_PORT": str(sql_port),
        "LEDGER_API__HTTP_PORT": "-1",
        "LEDGER_OBSERVABILITY__METRICS_PORT": "-1",
    }
    beside = Path(sys.executable).parent / "ledger"
    command = [str(beside) if beside.exists() else shutil.which("ledger") or "ledger", "serve"]
    server = subprocess.Popen(command, env=environment, cwd=workdir, stdout=subprocess.DEVNULL)
    token = issue_token(AuthSettings(), "analyst", SCOPES_ALL)  # dev mode: the service's default secret
    try:
        started = time.perf_counter()
        merchant = asyncio.run(post_workload(grpc_port, token, args.transactions, args.account_entries))
        print(f"posted {args.transactions:,} transactions in {time.perf_counter() - started:.1f} s (service loaded)")
        client = clickhouse_connect.get_client(
            host="127.0.0.1", port=sql_port, username="analyst", password=token, database="ledger"
        )
        deadline = time.monotonic() + PROJECTION_TIMEOUT_SECONDS
        while client.command("SELECT count() FROM entries") < 2 * args.transactions:
            assert time.monotonic() < deadline, "the read model did not catch up"
            time.sleep(0.2)
        now = time.time_ns()
        parameters = {"account": int(merchant), "from": now - MONTH_NS, "to": now}

        def over_endpoint() -> int:
            return len(client.query(STATEMENT, parameters=parameters).result_rows)

        latencies, rows = timed(args.queries, over_endpoint)
        percentiles("SQL endpoint (c-connect)", latencies, rows)
        client.close()
    finally:
        server.terminate()
        server.wait(STOP_TIMEOUT_SECONDS)
    try:
        direct = ChdbClient(workdir / "data" / "clickhouse", "ledger")
        bound = {"account": int(merchant), "from": now - MONTH_NS, "to": now}
        latencies, rows_direct = timed(args.queries, lambda: len(direct.query_rows(STATEMENT, bound)))
        assert rows_direct == rows
        percentiles("chDB direct (baseline)", latencies, rows_direct)
        direct.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
