#!/usr/bin/env python3
"""Overload benchmark: does the service refuse at once what it cannot finish in time?

Starts `ledger serve` as scripts/run.sh configures it (embedded engine, in-service chDB read model,
JSON gateway) but on free loopback ports and a fresh temp data dir, then:

1. unloaded: a few unary PostTransaction clients, to measure the latency the service gives when it is
   not overloaded (the yardstick for "admitted p99 within 2x unloaded p99");
2. overload: 300 unary PostTransaction + 30 PostTransactions (1,000 tx) gRPC clients + 40 HTTP
   POST /v1/transactions clients, every call with a 5 s deadline (gRPC deadline; HTTP client timeout and
   the X-Request-Timeout-Ms header). A refused call (RESOURCE_EXHAUSTED / 429) waits its retry hint
   (google.rpc.RetryInfo / Retry-After) but at most `--retry-delay-max` (1 s by default): the model is a
   closed-loop client that backs off as told yet comes back within a second, as a well-behaved gRPC
   client with its own retry ceiling would; `--retry-delay-max 30` models one that honours any hint.
   Calls started in the first `--warmup` second (every client's first call arrives at once: a herd no
   admission can spread, the last of 370 waits behind the 369 before it in gRPC's accept queue) are
   reported on rows of their own (marked *) and left out of the main rows; the closing ratio gives both.

Client-side latency includes the time a call waits in gRPC's accept queue before the server's code sees
it (grpc.aio accepts one call at a time per server, `api.grpc_servers` of them, each a poller-thread hand-off
and event-loop turns); the server-side histograms do not.
The difference between the two is that queue (and the network and the client's own loop).

The clients run in load-generator processes (the unloaded yardstick in one such process, the same code).
`--generator go` (the default when `go` is on PATH: built once from scripts/loadgen into
~/.cache/ledger-service) is a compiled generator with the same clients, requests, deadlines and retry rule
in one process; `--generator python` runs them in `--processes` Python processes (4 by default), each with
its own event loop and connections. The Python ones cost the shared cores ~60% of one core and lag 20-30
ms at p99 on their own (more than the 2x budget they measure); the compiled one a fraction of both. Each
process's own timer lag is reported, and the server-side latency histograms beside the client's (the
difference is time spent before the server's code saw a call: gRPC's accept queue, the network, the
client).

Where the time goes when neither the server nor the clients look busy: the event-loop threads' scheduler
accounts (/proc/<pid>/schedstat) are reported, time on a CPU and time runnable but waiting for one, with
the host's busy share (other work on the host included). On 2 shared cores the server's loop thread waits
for a CPU about as long as it runs: every turn of its loop, and so every accept, refusal and answer, is
late by that much, whatever the service's own code does.

Reports admitted p50/p99, refusals (and how long a refusal took), deadline-exceeded (gRPC
DEADLINE_EXCEEDED, HTTP 504 or client timeout), and committed-after-deadline: transactions the
service committed whose caller had already given up (the server's `ledger_transactions_total`
created count minus the transactions the clients saw acknowledged).

    python scripts/bench_overload.py [--seconds 10] [--generator go|python] [--processes N] [--env LEDGER_X=Y ...]
        [--unary 300] [--batch 30] [--http 40] [--warmup 1] [--retry-delay-max 1]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import grpc
import httpx
from google.rpc import error_details_pb2, status_pb2
from prometheus_client.parser import text_string_to_metric_families

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPE_READ, SCOPE_WRITE, SCOPES_ALL, issue_token
from facade.settings import AuthSettings
from ledger_testkit import loadgen
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
LOOP_PROBE_SECONDS = 0.01
PROCESSES_DEFAULT = 4
"""Python load-generator processes (a compiled generator runs in one: its goroutines use every core)."""
PROCESS_START_TIMEOUT_SECONDS = 120.0
"""Bound on a load-generator process's start (imports, connections) and on its result after the load."""
WRITE_METHODS = frozenset({"PostTransaction", "PostTransactions", "unmatched"})
"""The write operations in the server's histogram (HTTP refusals at the door are "unmatched": no route yet)."""
WARMUP_SECONDS_DEFAULT = 1.0
DRAIN_SECONDS = DEADLINE_SECONDS + 2.0
"""After the load: everything still queued or in flight has committed or been dropped by then."""


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), 0.0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sched:
    """A thread's scheduler account (Linux /proc/<pid>/schedstat, the main thread = its event loop): time on
    a CPU, and time runnable but waiting for one (a CPU-starved loop is slow without being busy)."""

    running_seconds: float = 0.0
    waiting_seconds: float = 0.0

    def __sub__(self, other: Sched) -> Sched:
        return Sched(self.running_seconds - other.running_seconds, self.waiting_seconds - other.waiting_seconds)


def sched(pid: int | str = "self") -> Sched:
    """The scheduler account of `pid`'s main thread (zeros where /proc has none)."""
    try:
        running, waiting, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return Sched()
    return Sched(int(running) / 1e9, int(waiting) / 1e9)


def host_busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole host (/proc/stat), (0, 0) where unavailable."""
    try:
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


@dataclass
class Tally:
    admitted: list[float] = field(default_factory=list)
    """Latency of calls answered with a result (per call; a batch counts once)."""
    acknowledged: int = 0
    """Transactions the clients saw committed."""
    refused: list[float] = field(default_factory=list)
    """Latency of RESOURCE_EXHAUSTED / 429 answers."""
    admitted_warmup: list[float] = field(default_factory=list)
    """Latency of calls answered with a result that started in the warm-up (not in `admitted`)."""
    refused_warmup: list[float] = field(default_factory=list)
    deadline_exceeded: int = 0
    deadline_exceeded_warmup: int = 0
    """Calls started in the warm-up that ran into their deadline (not in `deadline_exceeded`)."""
    other_errors: dict[str, int] = field(default_factory=dict)

    def other(self, name: str) -> None:
        self.other_errors[name] = self.other_errors.get(name, 0) + 1

    def add(self, other: Tally) -> None:
        self.admitted += other.admitted
        self.acknowledged += other.acknowledged
        self.refused += other.refused
        self.admitted_warmup += other.admitted_warmup
        self.refused_warmup += other.refused_warmup
        self.deadline_exceeded += other.deadline_exceeded
        self.deadline_exceeded_warmup += other.deadline_exceeded_warmup
        for name, count in other.other_errors.items():
            self.other_errors[name] = self.other_errors.get(name, 0) + count


def retry_delay(error: grpc.aio.AioRpcError, delay_max_seconds: float) -> float:
    metadata: Any = error.trailing_metadata()
    for key, value in metadata or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    delay: float = info.retry_delay.ToTimedelta().total_seconds()
                    return min(delay_max_seconds, delay)
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


def server_series(before: Samples, after: Samples) -> dict[tuple[str, str, str], list[tuple[float, float]]]:
    """The server's request histogram between two scrapes: (edge, method, code) → cumulative buckets."""
    series: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for (name, labels), value in after.items():
        if name != "ledger_request_duration_seconds_bucket":
            continue
        label = dict(labels)
        key = (label["edge"], label["method"], label["code"])
        series.setdefault(key, []).append((float(label["le"]), value - before.get((name, labels), 0.0)))
    for buckets in series.values():
        buckets.sort()
    return {key: buckets for key, buckets in series.items() if buckets[-1][1] > 0}


def bucket_quantile(buckets: list[tuple[float, float]], fraction: float) -> float:
    """The upper bound of the bucket holding the quantile (inf past the last finite bound)."""
    total = buckets[-1][1]
    for bound, count in buckets:
        if count >= fraction * total:
            return bound
    return buckets[-1][0]


def print_server_side(title: str, before: Samples, after: Samples) -> None:
    """Server-side latency (handler or middleware entry to answer, histogram bucket bounds) of the write
    methods: beside the client's, it shows how long a call waited before the server's code saw it."""
    print(f"server-side, {title} (bucket upper bounds, ms):")
    for (edge, method, code), buckets in sorted(server_series(before, after).items()):
        if method not in WRITE_METHODS:
            continue
        p50, p99 = bucket_quantile(buckets, 0.5) * 1e3, bucket_quantile(buckets, 0.99) * 1e3
        print(f"  {edge:<5}{method:<18}{code:<20}{buckets[-1][1]:>8.0f} calls  p50 {p50:>7.1f}  p99 {p99:>7.1f}")


def histogram_buckets(name: str, before: Samples, after: Samples, **labels: str) -> list[tuple[float, float]]:
    """One histogram's cumulative buckets between two scrapes (the series with `labels`)."""
    wanted = set(labels.items())
    buckets = [
        (float(dict(key)["le"]), value - before.get((sample, key), 0.0))
        for (sample, key), value in after.items()
        if sample == f"{name}_bucket" and wanted <= set(key)
    ]
    return sorted(buckets)


def print_engine_batches(before: Samples, after: Samples) -> None:
    """The engine's create_transfers calls (their sizes and durable latency): how long a small write admitted
    behind a batch waits for it (facade.batcher's time-capped batches)."""
    sizes = histogram_buckets("ledger_engine_batch_size", before, after, operation="create_transfers")
    seconds = histogram_buckets("ledger_engine_batch_duration_seconds", before, after, operation="create_transfers")
    if not sizes or not seconds or sizes[-1][1] <= 0:
        return
    print(
        f"engine batches, overload (and drain): {sizes[-1][1]:.0f}, transfers p50 {bucket_quantile(sizes, 0.5):.0f} "
        f"p99 {bucket_quantile(sizes, 0.99):.0f}, durable in p50 {bucket_quantile(seconds, 0.5) * 1e3:.1f} ms "
        f"p99 {bucket_quantile(seconds, 0.99) * 1e3:.1f} ms (bucket upper bounds)"
    )


@dataclass
class LoopLag:
    """How late a short timer fires on the load generator's own event loop: a late client inflates every
    latency it measures, so this says whether the client or the server is the bottleneck."""

    samples: list[float] = field(default_factory=list)

    async def probe(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            await asyncio.sleep(LOOP_PROBE_SECONDS)
            self.samples.append(max(0.0, loop.time() - started - LOOP_PROBE_SECONDS))


@dataclass(frozen=True)
class Load:
    """One load-generator process's share of the clients; `*_first` numbers its first client of each kind
    (idempotency keys stay unique across processes)."""

    port: int
    http_port: int
    token: str
    accounts: tuple[str, ...]
    seconds: float
    tag: str
    unary: int
    unary_first: int = 0
    batch: int = 0
    batch_first: int = 0
    http: int = 0
    http_first: int = 0
    retry_delay_max_seconds: float = RETRY_DELAY_SECONDS_MAX
    """A refused client waits the server's retry hint, at most this long."""
    warmup_seconds: float = 0.0
    """Calls started this long after the start are the warm-up: counted apart (every client's first call
    arrives at once, a herd no admission policy can spread: the last of 370 waits for the 369 before it)."""


@dataclass
class Generated:
    """What one load-generator process saw."""

    tallies: dict[str, Tally]
    lag_seconds: list[float]
    cpu_seconds: float
    loop_sched: Sched = field(default_factory=Sched)
    """The load generator's event-loop thread during the load."""


def split(total: int, parts: int, index: int) -> tuple[int, int]:
    """Client count and first client number of part `index` when `total` clients are spread over `parts`."""
    size, rest = divmod(total, parts)
    return size + (1 if index < rest else 0), index * size + min(index, rest)


def legs(accounts: tuple[str, ...], n: int) -> tuple[str, str, str]:
    source, destination = accounts[n % len(accounts)], accounts[(n * 7 + 1) % len(accounts)]
    if source == destination:
        destination = accounts[(n + 1) % len(accounts)]
    return source, destination, str(1 + n % 1000)


def transaction(accounts: tuple[str, ...], key: str, n: int) -> pb.PostTransactionRequest:
    source, destination, amount = legs(accounts, n)
    leg = pb.Leg(
        type=pb.LEG_TYPE_TRANSFER, from_account_id=source, to_account_id=destination, amount=amount, currency="USD"
    )
    return pb.PostTransactionRequest(
        idempotency_key=key, legs=[leg], metadata=pb.TransactionMetadata(source="bench", correlation_id=key)
    )


class Barrier(Protocol):
    def wait(self, timeout: float | None = None) -> int: ...


class ResultQueue(Protocol):
    def put(self, obj: Any) -> None: ...


def generate(load: Load, barrier: Barrier, results: ResultQueue) -> None:
    """A load-generator process: connects, waits for the others at `barrier`, runs, puts a Generated."""
    results.put(asyncio.run(_generate(load, barrier)))


async def _generate(load: Load, barrier: Barrier) -> Generated:
    metadata = (("authorization", f"Bearer {load.token}"),)
    timeout_ms = str(int(DEADLINE_SECONDS * 1000))
    http_headers = {"Authorization": f"Bearer {load.token}", "X-Request-Timeout-Ms": timeout_ms}
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{load.port}", options=own_connection)
        for _ in range(-(-load.unary // UNARY_CLIENTS_PER_CONNECTION) + load.batch)
    ]
    stubs: list[Any] = [rpc.LedgerStub(c) for c in channels]
    tallies = {"unary": Tally(), "batch": Tally(), "http": Tally()}
    limits = httpx.Limits(max_connections=load.http + 4, max_keepalive_connections=load.http + 4)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{load.http_port}", limits=limits) as http:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), SERVER_START_TIMEOUT_SECONDS)
        await asyncio.to_thread(barrier.wait, PROCESS_START_TIMEOUT_SECONDS)
        cpu_started, sched_started = time.process_time(), sched()
        stop_at = time.perf_counter() + load.seconds
        warm_at = time.perf_counter() + load.warmup_seconds

        def admitted(tally: Tally, started: float) -> None:
            (tally.admitted if started >= warm_at else tally.admitted_warmup).append(time.perf_counter() - started)

        def refused(tally: Tally, started: float) -> None:
            (tally.refused if started >= warm_at else tally.refused_warmup).append(time.perf_counter() - started)

        def late(tally: Tally, started: float) -> None:
            if started >= warm_at:
                tally.deadline_exceeded += 1
            else:
                tally.deadline_exceeded_warmup += 1

        async def grpc_call(tally: Tally, request: Any, method: Any, count: int) -> float:
            """One call; returns how long to wait before the next (a refusal's retry hint)."""
            started = time.perf_counter()
            try:
                response = await method(request, metadata=metadata, timeout=DEADLINE_SECONDS)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    refused(tally, started)
                    return retry_delay(error, load.retry_delay_max_seconds)
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    late(tally, started)
                else:
                    tally.other(error.code().name)
                return 0.0
            admitted(tally, started)
            if count == 1:
                tally.acknowledged += 1
            else:
                tally.acknowledged += sum(1 for r in response.results if r.HasField("transaction"))
            return 0.0

        async def http_call(tally: Tally, key: str, n: int) -> float:
            source, destination, amount = legs(load.accounts, n)
            leg = {"type": "LEG_TYPE_TRANSFER", "from_account_id": source, "to_account_id": destination}
            body = {"idempotency_key": key, "legs": [{**leg, "amount": amount, "currency": "USD"}]}
            started = time.perf_counter()
            try:
                response = await http.post(
                    "/v1/transactions", json=body, headers=http_headers, timeout=DEADLINE_SECONDS
                )
            except httpx.TimeoutException:
                late(tally, started)
                return 0.0
            except httpx.HTTPError as error:
                tally.other(type(error).__name__)
                return 0.0
            if response.status_code == 429:
                refused(tally, started)
                return min(load.retry_delay_max_seconds, float(response.headers.get("Retry-After", "1")))
            if response.status_code == 504:
                late(tally, started)
            elif response.status_code in (200, 201):
                admitted(tally, started)
                tally.acknowledged += 1
            else:
                tally.other(f"HTTP {response.status_code}")
            return 0.0

        async def unary_worker(worker: int) -> None:
            number = load.unary_first + worker
            n = 0
            while time.perf_counter() < stop_at:
                request = transaction(load.accounts, f"{load.tag}u-{number}-{n}", n + number)
                method = stubs[worker // UNARY_CLIENTS_PER_CONNECTION].PostTransaction
                await asyncio.sleep(await grpc_call(tallies["unary"], request, method, 1))
                n += 1

        async def batch_worker(worker: int) -> None:
            number = load.batch_first + worker
            n = 0
            while time.perf_counter() < stop_at:
                request = pb.PostTransactionsRequest(
                    transactions=[
                        transaction(load.accounts, f"{load.tag}b-{number}-{n}-{i}", n * BATCH_SIZE + i)
                        for i in range(BATCH_SIZE)
                    ]
                )
                method = stubs[-1 - worker].PostTransactions
                await asyncio.sleep(await grpc_call(tallies["batch"], request, method, BATCH_SIZE))
                n += 1

        async def http_worker(worker: int) -> None:
            number = load.http_first + worker
            n = 0
            while time.perf_counter() < stop_at:
                await asyncio.sleep(await http_call(tallies["http"], f"{load.tag}h-{number}-{n}", n + number))
                n += 1

        lag, lag_stop = LoopLag(), asyncio.Event()
        lag_task = asyncio.create_task(lag.probe(lag_stop))
        await asyncio.gather(
            *(unary_worker(i) for i in range(load.unary)),
            *(batch_worker(i) for i in range(load.batch)),
            *(http_worker(i) for i in range(load.http)),
        )
        lag_stop.set()
        await lag_task
        cpu_seconds, loop_sched = time.process_time() - cpu_started, sched() - sched_started
    for channel in channels:
        await channel.close()
    return Generated(tallies, lag.samples, cpu_seconds, loop_sched)


@dataclass
class Run:
    """The merged result of one load run over its processes."""

    tallies: dict[str, Tally]
    lag_p99_seconds: list[float]
    """Each process's own event-loop lag p99."""
    client_cpu_seconds: float
    server_cpu_seconds: float
    elapsed_seconds: float
    server_loop: Sched = field(default_factory=Sched)
    """The server's event-loop thread (its main thread) during the load."""
    client_loops: list[Sched] = field(default_factory=list)
    host_busy: float = 0.0
    """Share of the host's CPU time busy during the load (every process, this benchmark's and others')."""


def loadgen_command(load: Load) -> list[str]:
    return [
        "-mode=overload",
        f"-grpc=127.0.0.1:{load.port}",
        f"-http-address=127.0.0.1:{load.http_port}",
        f"-token={load.token}",
        f"-accounts={','.join(load.accounts)}",
        f"-tag={load.tag}",
        f"-seconds={load.seconds}s",
        f"-warmup={load.warmup_seconds}s",
        f"-deadline={DEADLINE_SECONDS}s",
        f"-retry-delay-max={load.retry_delay_max_seconds}s",
        f"-unary={load.unary}",
        f"-unary-first={load.unary_first}",
        f"-batch={load.batch}",
        f"-batch-first={load.batch_first}",
        f"-batch-size={BATCH_SIZE}",
        f"-http={load.http}",
        f"-http-first={load.http_first}",
        f"-unary-per-connection={UNARY_CLIENTS_PER_CONNECTION}",
    ]


async def run_loadgen(binary: Path, loads: list[Load], server_pid: int) -> Run:
    """Runs the loads in one compiled generator process each, started together (each says "ready" once
    connected, and starts on a line on its stdin); each reports its own threads' scheduler account."""
    async with loadgen.started(binary, [loadgen_command(load) for load in loads]) as generators:
        started, cpu_server = time.perf_counter(), process_cpu_seconds(server_pid)
        loop_server, (busy_started, ticks_started) = sched(server_pid), host_busy_ticks()
        for generator in generators:
            await generator.start()
        timeout = max(load.seconds for load in loads)
        documents = [await generator.result(timeout) for generator in generators]
        elapsed = time.perf_counter() - started
        cpu_server = process_cpu_seconds(server_pid) - cpu_server
        loop_server = sched(server_pid) - loop_server
        busy, ticks = host_busy_ticks()
    tallies = {"unary": Tally(), "batch": Tally(), "http": Tally()}
    for document in documents:
        for name, fields in document["tallies"].items():
            tallies[name].add(Tally(**fields))
    return Run(
        tallies,
        [percentile(document["lag_seconds"], 0.99) for document in documents],
        sum(document["cpu_seconds"] for document in documents),
        cpu_server,
        elapsed,
        loop_server,
        [Sched(document["running_seconds"], document["waiting_seconds"]) for document in documents],
        (busy - busy_started) / max(1, ticks - ticks_started),
    )


async def run_load(loads: list[Load], server_pid: int) -> Run:
    """Runs the loads in one Python process each, started together (a barrier after every process connected)."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(loads) + 1)
    queue = context.Queue()
    processes = [context.Process(target=generate, args=(load, barrier, queue), daemon=True) for load in loads]
    for process in processes:
        process.start()
    try:
        await asyncio.to_thread(barrier.wait, PROCESS_START_TIMEOUT_SECONDS)
        started, cpu_server = time.perf_counter(), process_cpu_seconds(server_pid)
        loop_server, (busy_started, ticks_started) = sched(server_pid), host_busy_ticks()
        timeout = max(load.seconds for load in loads) + PROCESS_START_TIMEOUT_SECONDS
        generated: list[Generated] = [await asyncio.to_thread(queue.get, True, timeout) for _ in loads]
        elapsed = time.perf_counter() - started
        cpu_server = process_cpu_seconds(server_pid) - cpu_server
        loop_server = sched(server_pid) - loop_server
        busy, ticks = host_busy_ticks()
    finally:
        for process in processes:
            process.join(PROCESS_START_TIMEOUT_SECONDS)
            if process.is_alive():
                process.kill()
    tallies = {"unary": Tally(), "batch": Tally(), "http": Tally()}
    for one in generated:
        for name, tally in one.tallies.items():
            tallies[name].add(tally)
    return Run(
        tallies,
        [percentile(one.lag_seconds, 0.99) for one in generated],
        sum(one.cpu_seconds for one in generated),
        cpu_server,
        elapsed,
        loop_server,
        [one.loop_sched for one in generated],
        (busy - busy_started) / max(1, ticks - ticks_started),
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="overload duration")
    parser.add_argument(
        "--generator",
        choices=("go", "python"),
        default="go" if shutil.which("go") else "python",
        help="the compiled load generator (scripts/loadgen; the default with `go` on PATH) or the Python one",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help=f"load-generator processes (default: 1 compiled, {PROCESSES_DEFAULT} Python)",
    )
    parser.add_argument(
        "--retry-delay-max",
        type=float,
        default=RETRY_DELAY_SECONDS_MAX,
        help="the longest retry hint a refused client honours (seconds; default 1, so clients keep coming back)",
    )
    parser.add_argument("--env", action="append", default=[], help="extra server setting NAME=VALUE")
    parser.add_argument(
        "--warmup",
        type=float,
        default=WARMUP_SECONDS_DEFAULT,
        help="calls started in the first seconds of the overload are reported apart (the herd of first calls)",
    )
    parser.add_argument("--unary", type=int, default=UNARY_CLIENTS, help="unary PostTransaction clients")
    parser.add_argument("--batch", type=int, default=BATCH_CLIENTS, help="PostTransactions (1,000 tx) clients")
    parser.add_argument("--http", type=int, default=HTTP_CLIENTS, help="HTTP POST /v1/transactions clients")
    args = parser.parse_args()
    binary = loadgen.build_loadgen() if args.generator == "go" else None
    if args.generator == "go" and binary is None:
        parser.error("--generator go needs the Go toolchain (`go` on PATH)")
    args.processes = args.processes or (1 if binary is not None else PROCESSES_DEFAULT)
    assert args.processes >= 1

    async def load_run(loads: list[Load], server_pid: int) -> Run:
        if binary is not None:
            return await run_loadgen(binary, loads, server_pid)
        return await run_load(loads, server_pid)

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
    metrics_url = f"http://127.0.0.1:{ops_port}/metrics"
    load_average_before = os.getloadavg()[0]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel, httpx.AsyncClient() as ops:
            await asyncio.wait_for(channel.channel_ready(), SERVER_START_TIMEOUT_SECONDS)
            stub: Any = rpc.LedgerStub(channel)
            accounts = []
            for i in range(ACCOUNTS):
                account = await stub.CreateAccount(
                    pb.CreateAccountRequest(
                        currency="USD", external_reference=f"acct-{i}", type=pb.ACCOUNT_TYPE_OVERDRAFT_ALLOWED
                    ),
                    metadata=admin,
                )
                accounts.append(account.account_id)
            base_load = Load(port, http_port, writer_token, tuple(accounts), UNLOADED_SECONDS, "q", UNLOADED_CLIENTS)
            first = await scrape(ops, metrics_url)
            unloaded = await load_run([base_load], server.pid)
            await asyncio.sleep(0.5)
            second = await scrape(ops, metrics_url)
            loads = []
            for index in range(args.processes):
                unary, unary_first = split(args.unary, args.processes, index)
                batch, batch_first = split(args.batch, args.processes, index)
                http, http_first = split(args.http, args.processes, index)
                loads.append(
                    replace(
                        base_load,
                        seconds=args.seconds,
                        tag="o",
                        unary=unary,
                        unary_first=unary_first,
                        batch=batch,
                        batch_first=batch_first,
                        http=http,
                        http_first=http_first,
                        retry_delay_max_seconds=args.retry_delay_max,
                        warmup_seconds=args.warmup,
                    )
                )
            overload_run = await load_run(loads, server.pid)
            at_end = await scrape(ops, metrics_url)
            await asyncio.sleep(DRAIN_SECONDS)
            third = await scrape(ops, metrics_url)
            created_unloaded = created_total(second) - created_total(first)
            created_overload = created_total(third) - created_total(second)
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(data, ignore_errors=True)

    base = unloaded.tallies["unary"]
    base_p99 = percentile(base.admitted, 0.99)
    overload = overload_run.tallies
    elapsed = overload_run.elapsed_seconds
    print(f"unloaded ({UNLOADED_CLIENTS} unary clients in 1 {args.generator} process, {UNLOADED_SECONDS:.0f} s): "
          f"{len(base.admitted)} "
          f"calls, p50 {percentile(base.admitted, 0.5) * 1e3:.1f} ms, p99 {base_p99 * 1e3:.1f} ms, refused "
          f"{len(base.refused)} (committed {created_unloaded:.0f}, acknowledged {base.acknowledged}); client lag "
          f"p99 {unloaded.lag_p99_seconds[0] * 1e3:.1f} ms")  # fmt: skip
    print(f"overload: {args.unary} unary + {args.batch} batch ({BATCH_SIZE} tx) + {args.http} HTTP clients in "
          f"{args.processes} {args.generator} processes, {DEADLINE_SECONDS:.0f} s deadlines, retry hints honoured "
          f"up to "
          f"{args.retry_delay_max:g} s, {elapsed:.1f} s; CPU busy: server "
          f"{overload_run.server_cpu_seconds / elapsed:.0%}, clients {overload_run.client_cpu_seconds / elapsed:.0%} "
          f"of one core; load average {load_average_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} cores)")  # fmt: skip
    header = f"{'edge':<8}{'admitted':>9}{'p50 ms':>9}{'p99 ms':>9}{'refused':>9}{'refusal p99 ms':>16}{'deadline':>10}"
    print(header + "  other")
    print("-" * (len(header) + 12))
    acknowledged = 0
    for name, tally in overload.items():
        acknowledged += tally.acknowledged
        print(
            f"{name:<8}{len(tally.admitted):>9}{percentile(tally.admitted, 0.5) * 1e3:>9.1f}"
            f"{percentile(tally.admitted, 0.99) * 1e3:>9.1f}{len(tally.refused):>9}"
            f"{percentile(tally.refused, 0.99) * 1e3:>16.1f}{tally.deadline_exceeded:>10}  {tally.other_errors or ''}"
        )
    for name, tally in overload.items():
        if tally.admitted_warmup or tally.refused_warmup or tally.deadline_exceeded_warmup:
            print(
                f"{name + '*':<8}{len(tally.admitted_warmup):>9}{percentile(tally.admitted_warmup, 0.5) * 1e3:>9.1f}"
                f"{percentile(tally.admitted_warmup, 0.99) * 1e3:>9.1f}{len(tally.refused_warmup):>9}"
                f"{percentile(tally.refused_warmup, 0.99) * 1e3:>16.1f}{tally.deadline_exceeded_warmup:>10}"
            )
    print(
        f"(* calls started in the first {args.warmup:g} s, the herd of every client's first call: "
        "not in the rows above)"
    )
    unary_p99 = percentile(overload["unary"].admitted, 0.99)
    unary_all = overload["unary"].admitted + overload["unary"].admitted_warmup
    late = created_overload - acknowledged
    print(f"transactions acknowledged: {acknowledged} ({acknowledged / elapsed:,.0f}/s); committed by the server: "
          f"{created_overload:.0f}; committed after the caller gave up: {late:.0f}")  # fmt: skip
    ratio = unary_p99 / base_p99 if base_p99 else float("inf")
    gauges = {name: value for (name, _), value in at_end.items() if not name.endswith("_bucket")}
    lag_ms = gauges.get("ledger_event_loop_lag_seconds", 0.0) * 1e3
    wait_ms = gauges.get("ledger_write_expected_wait_seconds", 0.0) * 1e3
    rate = gauges.get("ledger_write_throughput_transfers_per_second", 0.0)
    limit = gauges.get("ledger_write_limit", 0.0)
    pace_ms = gauges.get("ledger_retry_pace_seconds", 0.0) * 1e3
    print(
        f"server at the end of the overload: event-loop lag {lag_ms:.0f} ms, expected write wait {wait_ms:.0f} ms, "
        f"measured commit rate {rate:,.0f} transfers/s (full batches), write limit {limit:.0f}, "
        f"retry pace {pace_ms:.0f} ms"
    )
    lags = ", ".join(f"{lag * 1e3:.0f}" for lag in overload_run.lag_p99_seconds)
    print(f"load generators' own lag p99 during the overload (a 10 ms timer's lateness, ms, per process): {lags}")
    loop = overload_run.server_loop
    clients = ", ".join(
        f"{one.running_seconds / elapsed:.0%}/{one.waiting_seconds / elapsed:.0%}" for one in overload_run.client_loops
    )
    print(
        f"event-loop threads on a CPU / runnable but waiting for one, share of the overload: server "
        f"{loop.running_seconds / elapsed:.0%} / {loop.waiting_seconds / elapsed:.0%}; load generators "
        f"{'(every thread) ' if binary is not None else ''}{clients}; "
        f"host CPUs busy {overload_run.host_busy:.0%} (every process on the host)"
    )
    print_server_side("unloaded", first, second)
    print_server_side("overload (and drain)", second, third)
    print_engine_batches(second, third)
    print(f"admitted unary p99 under overload / unloaded p99: {ratio:.2f}x (goal <= 2x); with the warm-up: "
          f"{percentile(unary_all, 0.99) / base_p99 if base_p99 else float('inf'):.2f}x")  # fmt: skip


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
