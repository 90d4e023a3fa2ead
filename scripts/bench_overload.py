#!/usr/bin/env python3
"""Overload benchmark: does the service refuse at once what it cannot finish in time?

Starts `ledger serve` as scripts/run.sh configures it (embedded engine, in-service chDB read model,
JSON gateway) but on free loopback ports and a fresh temp data dir, then:

1. unloaded: a few unary PostTransaction clients, to measure the latency the service gives when it is
   not overloaded (the yardstick for "admitted p99 within 2x unloaded p99");
2. overload: 300 unary PostTransaction + 30 PostTransactions (1,000 tx) gRPC clients + 40 HTTP
   POST /v1/transactions clients, every call with a 5 s deadline (gRPC deadline; HTTP client timeout and
   the X-Request-Timeout-Ms header). A refused call (RESOURCE_EXHAUSTED / 429) waits its retry hint.

Reports admitted p50/p99, refusals (and how long a refusal took), deadline-exceeded (gRPC
DEADLINE_EXCEEDED, HTTP 504 or client timeout), and committed-after-deadline: transactions the
service committed whose caller had already given up (the server's `ledger_transactions_total`
created count minus the transactions the clients saw acknowledged).

    python scripts/bench_overload.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.rpc import error_details_pb2, status_pb2
from prometheus_client.parser import text_string_to_metric_families

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPE_READ, SCOPE_WRITE, SCOPES_ALL, issue_token
from facade.settings import AuthSettings
from ledger_testkit.ports import free_port
from ledger_testkit.stats import percentile

ACCOUNTS = 64
SERVER_START_TIMEOUT_SECONDS = 60.0
DEADLINE_SECONDS = 5.0
UNARY_CLIENTS = 300
BATCH_CLIENTS = 30
BATCH_SIZE = 1000
HTTP_CLIENTS = 40
UNLOADED_CLIENTS = 4
UNLOADED_SECONDS = 3.0
RETRY_DELAY_SECONDS_MAX = 1.0
UNARY_CLIENTS_PER_CONNECTION = 10
"""Clients are many processes in real life, each with its own connection: here each batch client and each
group of unary clients gets its own HTTP/2 connection, so a batch does not hold unary calls behind it in
one TCP stream (a client-side queue the server cannot see)."""
DRAIN_SECONDS = DEADLINE_SECONDS + 2.0
"""After the load: everything still queued or in flight has committed or been dropped by then."""


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Tally:
    admitted: list[float] = field(default_factory=list)
    """Latency of calls answered with a result (per call; a batch counts once)."""
    acknowledged: int = 0
    """Transactions the clients saw committed."""
    refused: list[float] = field(default_factory=list)
    """Latency of RESOURCE_EXHAUSTED / 429 answers."""
    deadline_exceeded: int = 0
    other_errors: dict[str, int] = field(default_factory=dict)

    def other(self, name: str) -> None:
        self.other_errors[name] = self.other_errors.get(name, 0) + 1


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    metadata: Any = error.trailing_metadata()
    for key, value in metadata or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    delay: float = info.retry_delay.ToTimedelta().total_seconds()
                    return min(RETRY_DELAY_SECONDS_MAX, delay)
    return 0.05


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient, url: str) -> Samples:
    response = await client.get(url)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def created_total(samples: Samples) -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "ledger_transactions_total" and ("outcome", "created") in labels
    )


def server_quantile(before: Samples, after: Samples, method: str, code: str, fraction: float) -> float:
    """The server-side latency quantile (its request histogram, from handler entry to answer): the upper
    bound of the bucket holding it. Apart from the client's, it excludes time queued before the handler."""
    buckets: list[tuple[float, float]] = []
    for (name, labels), value in after.items():
        label = dict(labels)
        wanted = {"method": method, "code": code, "edge": "grpc"}
        if name == "ledger_request_duration_seconds_bucket" and all(label.get(k) == v for k, v in wanted.items()):
            buckets.append((float(label["le"]), value - before.get((name, labels), 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return 0.0
    total = buckets[-1][1]
    for bound, count in buckets:
        if count >= fraction * total:
            return bound
    return buckets[-1][0]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="overload duration")
    parser.add_argument("--env", action="append", default=[], help="extra server setting NAME=VALUE")
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    port, http_port, ops_port = free_port(), free_port(), free_port()
    env = dict(
        os.environ,
        LEDGER_API__PORT=str(port),
        LEDGER_API__HTTP_PORT=str(http_port),
        LEDGER_OBSERVABILITY__METRICS_PORT=str(ops_port),
        LEDGER_ENGINE__DATA_DIR=str(data / "engine"),
        LEDGER_API__METADATA_DB=str(data / "metadata.sqlite3"),
        LEDGER_OBSERVABILITY__LOG_LEVEL="WARNING",
        LEDGER_CLICKHOUSE__CHDB_PATH=str(data / "clickhouse"),
        LEDGER_CLICKHOUSE__PROJECTOR_CHECKPOINT=str(data / "projector.json"),
        LEDGER_KAFKA__CHANGE_CAPTURE_CHECKPOINT=str(data / "kafka.json"),
    )
    for setting in args.env:
        name, _, value = setting.partition("=")
        env[name] = value
    ledger = Path(sys.executable).with_name("ledger")
    server = subprocess.Popen([str(ledger) if ledger.exists() else "ledger", "serve"], env=env, cwd=data)
    admin = (("authorization", f"Bearer {issue_token(AuthSettings(), 'bench', SCOPES_ALL)}"),)
    writer_token = issue_token(AuthSettings(), "bench", frozenset({SCOPE_READ, SCOPE_WRITE}))
    metadata = (("authorization", f"Bearer {writer_token}"),)
    timeout_ms = str(int(DEADLINE_SECONDS * 1000))
    http_headers = {"Authorization": f"Bearer {writer_token}", "X-Request-Timeout-Ms": timeout_ms}
    metrics_url = f"http://127.0.0.1:{ops_port}/metrics"
    try:
        limits = httpx.Limits(max_connections=HTTP_CLIENTS + 4, max_keepalive_connections=HTTP_CLIENTS + 4)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", limits=limits) as http,
            httpx.AsyncClient() as ops,
        ):
            await asyncio.wait_for(channel.channel_ready(), SERVER_START_TIMEOUT_SECONDS)
            stub: Any = rpc.LedgerStub(channel)
            own_connection = [("grpc.use_local_subchannel_pool", 1)]
            channels = [
                grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own_connection)
                for _ in range(UNARY_CLIENTS // UNARY_CLIENTS_PER_CONNECTION + BATCH_CLIENTS + 1)
            ]
            stubs: list[Any] = [rpc.LedgerStub(c) for c in channels]
            accounts = []
            for i in range(ACCOUNTS):
                account = await stub.CreateAccount(
                    pb.CreateAccountRequest(
                        currency="USD", external_reference=f"acct-{i}", type=pb.ACCOUNT_TYPE_OVERDRAFT_ALLOWED
                    ),
                    metadata=admin,
                )
                accounts.append(account.account_id)

            def legs(n: int) -> tuple[str, str, str]:
                source, destination = accounts[n % ACCOUNTS], accounts[(n * 7 + 1) % ACCOUNTS]
                if source == destination:
                    destination = accounts[(n + 1) % ACCOUNTS]
                return source, destination, str(1 + n % 1000)

            def transaction(key: str, n: int) -> pb.PostTransactionRequest:
                source, destination, amount = legs(n)
                leg = pb.Leg(
                    type=pb.LEG_TYPE_TRANSFER, from_account_id=source, to_account_id=destination, amount=amount,
                    currency="USD",
                )  # fmt: skip
                return pb.PostTransactionRequest(
                    idempotency_key=key, legs=[leg], metadata=pb.TransactionMetadata(source="bench", correlation_id=key)
                )

            async def grpc_call(tally: Tally, request: Any, method: Any, count: int) -> float:
                """One call; returns how long to wait before the next (a refusal's retry hint)."""
                started = time.perf_counter()
                try:
                    response = await method(request, metadata=metadata, timeout=DEADLINE_SECONDS)
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        tally.refused.append(time.perf_counter() - started)
                        return retry_delay(error)
                    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        tally.deadline_exceeded += 1
                    else:
                        tally.other(error.code().name)
                    return 0.0
                tally.admitted.append(time.perf_counter() - started)
                if count == 1:
                    tally.acknowledged += 1
                else:
                    tally.acknowledged += sum(1 for r in response.results if r.HasField("transaction"))
                return 0.0

            async def http_call(tally: Tally, key: str, n: int) -> float:
                source, destination, amount = legs(n)
                body = {
                    "idempotency_key": key,
                    "legs": [
                        {
                            "type": "LEG_TYPE_TRANSFER",
                            "from_account_id": source,
                            "to_account_id": destination,
                            "amount": amount,
                            "currency": "USD",
                        }
                    ],
                }
                started = time.perf_counter()
                try:
                    response = await http.post(
                        "/v1/transactions", json=body, headers=http_headers, timeout=DEADLINE_SECONDS
                    )
                except httpx.TimeoutException:
                    tally.deadline_exceeded += 1
                    return 0.0
                except httpx.HTTPError as error:
                    tally.other(type(error).__name__)
                    return 0.0
                if response.status_code == 429:
                    tally.refused.append(time.perf_counter() - started)
                    return min(RETRY_DELAY_SECONDS_MAX, float(response.headers.get("Retry-After", "1")))
                if response.status_code == 504:
                    tally.deadline_exceeded += 1
                elif response.status_code == 200:
                    tally.admitted.append(time.perf_counter() - started)
                    tally.acknowledged += 1
                else:
                    tally.other(f"HTTP {response.status_code}")
                return 0.0

            async def run(seconds: float, unary: int, batch: int, http_clients: int, tag: str) -> dict[str, Tally]:
                tallies = {"unary": Tally(), "batch": Tally(), "http": Tally()}
                stop_at = time.perf_counter() + seconds

                async def unary_worker(worker: int) -> None:
                    n = 0
                    while time.perf_counter() < stop_at:
                        request = transaction(f"{tag}u-{worker}-{n}", n + worker)
                        method = stubs[worker // UNARY_CLIENTS_PER_CONNECTION].PostTransaction
                        await asyncio.sleep(await grpc_call(tallies["unary"], request, method, 1))
                        n += 1

                async def batch_worker(worker: int) -> None:
                    n = 0
                    while time.perf_counter() < stop_at:
                        request = pb.PostTransactionsRequest(
                            transactions=[
                                transaction(f"{tag}b-{worker}-{n}-{i}", n * BATCH_SIZE + i) for i in range(BATCH_SIZE)
                            ]
                        )
                        tally = tallies["batch"]
                        method = stubs[-1 - worker].PostTransactions
                        await asyncio.sleep(await grpc_call(tally, request, method, BATCH_SIZE))
                        n += 1

                async def http_worker(worker: int) -> None:
                    n = 0
                    while time.perf_counter() < stop_at:
                        await asyncio.sleep(await http_call(tallies["http"], f"{tag}h-{worker}-{n}", n + worker))
                        n += 1

                await asyncio.gather(
                    *(unary_worker(i) for i in range(unary)),
                    *(batch_worker(i) for i in range(batch)),
                    *(http_worker(i) for i in range(http_clients)),
                )
                return tallies

            first = await scrape(ops, metrics_url)
            unloaded = await run(UNLOADED_SECONDS, UNLOADED_CLIENTS, 0, 0, "q")
            await asyncio.sleep(0.5)
            second = await scrape(ops, metrics_url)
            started = time.perf_counter()
            cpu_client, cpu_server = time.process_time(), process_cpu_seconds(server.pid)
            overload = await run(args.seconds, UNARY_CLIENTS, BATCH_CLIENTS, HTTP_CLIENTS, "o")
            elapsed = time.perf_counter() - started
            at_end = await scrape(ops, metrics_url)
            cpu_client = time.process_time() - cpu_client
            cpu_server = process_cpu_seconds(server.pid) - cpu_server
            await asyncio.sleep(DRAIN_SECONDS)
            third = await scrape(ops, metrics_url)
            for extra in channels:
                await extra.close()
            created_unloaded = created_total(second) - created_total(first)
            created_overload = created_total(third) - created_total(second)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(data, ignore_errors=True)

    base = unloaded["unary"]
    base_p99 = percentile(base.admitted, 0.99)
    print(f"unloaded ({UNLOADED_CLIENTS} unary clients, {UNLOADED_SECONDS:.0f} s): {len(base.admitted)} calls, "
          f"p50 {percentile(base.admitted, 0.5) * 1e3:.1f} ms, p99 {base_p99 * 1e3:.1f} ms "
          f"(committed {created_unloaded:.0f}, acknowledged {base.acknowledged})")  # fmt: skip
    print(f"overload: {UNARY_CLIENTS} unary + {BATCH_CLIENTS} batch ({BATCH_SIZE} tx) + {HTTP_CLIENTS} HTTP clients, "
          f"{DEADLINE_SECONDS:.0f} s deadlines, {elapsed:.1f} s; CPU busy: server {cpu_server / elapsed:.0%}, "
          f"clients {cpu_client / elapsed:.0%} of one core (load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores)")  # fmt: skip
    header = f"{'edge':<8}{'admitted':>9}{'p50 ms':>9}{'p99 ms':>9}{'refused':>9}{'refusal p99 ms':>16}{'deadline':>10}"
    print(header + "  other")
    print("-" * (len(header) + 12))
    acknowledged = 0
    admitted_all: list[float] = []
    for name, tally in overload.items():
        acknowledged += tally.acknowledged
        admitted_all += tally.admitted
        print(
            f"{name:<8}{len(tally.admitted):>9}{percentile(tally.admitted, 0.5) * 1e3:>9.1f}"
            f"{percentile(tally.admitted, 0.99) * 1e3:>9.1f}{len(tally.refused):>9}"
            f"{percentile(tally.refused, 0.99) * 1e3:>16.1f}{tally.deadline_exceeded:>10}  {tally.other_errors or ''}"
        )
    unary_p99 = percentile(overload["unary"].admitted, 0.99)
    late = created_overload - acknowledged
    print(f"transactions acknowledged: {acknowledged} ({acknowledged / elapsed:,.0f}/s); committed by the server: "
          f"{created_overload:.0f}; committed after the caller gave up: {late:.0f}")  # fmt: skip
    ratio = unary_p99 / base_p99 if base_p99 else float("inf")
    gauges = {name: value for (name, _), value in at_end.items() if not name.endswith("_bucket")}
    lag_ms = gauges.get("ledger_event_loop_lag_seconds", 0.0) * 1e3
    wait_ms = gauges.get("ledger_write_expected_wait_seconds", 0.0) * 1e3
    rate = gauges.get("ledger_write_throughput_transfers_per_second", 0.0)
    print(
        f"server at the end of the overload: event-loop lag {lag_ms:.0f} ms, expected write wait {wait_ms:.0f} ms, "
        f"measured commit rate {rate:,.0f} transfers/s (full batches)"
    )
    print(
        "server-side (handler entry to answer, histogram bucket bound) PostTransaction p99: unloaded "
        f"{server_quantile(first, second, 'PostTransaction', 'OK', 0.99) * 1e3:.0f} ms, overload admitted "
        f"{server_quantile(second, third, 'PostTransaction', 'OK', 0.99) * 1e3:.0f} ms, overload refused "
        f"{server_quantile(second, third, 'PostTransaction', 'RESOURCE_EXHAUSTED', 0.99) * 1e3:.0f} ms"
    )
    print(f"admitted unary p99 under overload / unloaded p99: {ratio:.2f}x (goal <= 2x)")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
