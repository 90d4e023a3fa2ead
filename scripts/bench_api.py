#!/usr/bin/env python3
"""Benchmark the gRPC API end to end as users run it: durable tx/s, latency, server CPU per transaction.

One run measures, over loopback, with the same client for every server:

- "defaults": `ledger serve` exactly as `scripts/run.sh` starts it (2 front processes on a 2-core host,
  facade.settings.settings_served; read model on, in its own child process, JSON gateway on, metrics on,
  logs at INFO); only the ports (free ones) and the data
  directory (a fresh temp dir, the server's working directory) differ;
- "read model off": the same with `clickhouse.serve_history=false` (the write path alone), labelled;
- the no-op grpc.aio server (same protocol, the handler returns at once): what gRPC itself costs here;
- the PostgreSQL peer: a plain double-entry ledger (accounts(id, balance) + transfers, row locks, one
  database transaction per transfer, fsync on) on a throwaway cluster this script starts with
  initdb/pg_ctl (binaries from scripts/install_postgres.sh), driven by psycopg 3 async with the same
  concurrency and the same transfers.

The client (`--client`): by default the compiled generator (scripts/loadgen, Go, built on first use; see
ledger_testkit.loadgen) for the unary and batch rows, the no-op baseline and the PostgreSQL peer (pgx, one
connection per worker, the same statements), as the issue's own figures were taken: the Python client
(grpc.aio, psycopg; `--client python`) spends on the same two cores CPU the servers then wait for. The
stream row and the visibility probe stay in Python.

Server CPU µs/tx is the growth of utime+stime (/proc/<pid>/stat) of the server's whole process tree over
a row, divided by the transactions it acknowledged; "B/tx written" likewise from /proc/<pid>/io write_bytes.
Every write is acknowledged only after it is durable.
Client and servers share the machine's cores (and on a shared machine, other load): compare the ratios
to the no-op baseline and to PostgreSQL from the same run rather than absolute numbers across runs.

Projection lag (read model on): a probe posts a transaction every 0.2 s during each row and one poller
asks the History API every 0.1 s, while a probe is out, how far the read model is projected; each row's
note gives the time from acknowledgement to visible (p50, p99, max). "defaults ÷ read model off" pairs
the rows by kind. The probe is the bench's own load on the defaults rows and is not subtracted: each of
its History queries costs the read model's process 3-7 ms of CPU (chDB's cost per query) and the service
~1 ms; at the 20 a second it asked before (a correlation id, every 50 ms) that was ~15% of a core (~15
µs/tx of the defaults' CPU at 10,000 tx/s); at 10 a second of the cheapest History query (an empty
ListTransactions window) it is ~5%. "server process alone" in the notes is the service's own pid's CPU
per transaction (without the read model's child), from /proc/<pid>/stat.

    python scripts/bench_api.py [--seconds 3] [--profile DIR] [--rows unary,batch,stream]
        [--configs "defaults,read model off"] [--no-postgres] [--client go|python] [--connections N]

--profile DIR records each server with py-spy (collapsed stacks per configuration, DIR/<config>.folded,
the read model's process included) or, without py-spy, runs it under cProfile (DIR/<config>.prof, the
event loop's thread only, written when the server stops).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from facade.api.gen.ledger.v1 import history_pb2 as hpb
from facade.api.gen.ledger.v1 import history_pb2_grpc as history_rpc
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPE_READ, SCOPE_WRITE, SCOPES_ALL, issue_token
from facade.settings import AuthSettings
from ledger_testkit import loadgen
from ledger_testkit.engine_counters import EngineCounters
from ledger_testkit.ports import free_port
from ledger_testkit.stats import percentile

ACCOUNTS = 64
SERVER_START_TIMEOUT_SECONDS = 60.0
SERVER_STOP_TIMEOUT_SECONDS = 60.0
FLOOR_TX_PER_SECOND = 10_000
FLOOR_LATENCY_SECONDS_P99 = 0.100
STREAM_READ_AHEAD_MAX = 512
LAG_SAMPLE_INTERVAL_SECONDS = 0.5
"""The /metrics scrape for the projector's own lag figure: it costs the server, so not too often."""
LAG_PROBE_INTERVAL_SECONDS = 0.2
"""How often the visibility probe posts a transaction (and then polls the read model for it)."""
LAG_PROBE_POLL_SECONDS = 0.1
"""One History query per poll however many probes are out, only while one is out. Each costs the read
model's process 3-7 ms of CPU (chDB's fixed cost per query, whatever the query: measured 3-4 ms for the
empty window below, 5-7 ms for a correlation id no change carries, at 60,000 transactions) and the service
~1-1.5 ms: at the 0.05 s this was, 20 a second took ~15% of a core, charged to the defaults rows' CPU µs/tx
(~15 µs/tx at 10,000 tx/s) and taken from the cores the writes share; now ~5%. A sample is at most this
much above the truth."""
LAG_PROBE_WINDOW_FROM_NS = 1 << 63
"""The probe's query: ListTransactions from this engine timestamp on (a window no change is in, year 2262):
the cheapest History answer that carries projected_until (the primary key excludes every part)."""
LAG_PROBE_WAIT_SECONDS_MAX = 30.0
"""A probe not visible after this long counts as this long (and the probe goes on with the next)."""
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parent.parent

UNARY_CONCURRENCY = (16, 64)
ROOT_SHARE_NOTED_MIN = 0.1
"""A row notes its server's root process's own CPU when that is at least this share of the tree's."""
BATCHES = ((100, 4), (1000, 4))
"""(transactions per RPC, concurrent RPCs)."""
STREAMS = 16


@dataclass(frozen=True, slots=True)
class ProcessStat:
    """One process's parent and utime+stime (seconds), from /proc/<pid>/stat."""

    parent_pid: int
    cpu_seconds: float


def process_stats() -> dict[int, ProcessStat]:
    """Every live process's ProcessStat, by pid (one pass over /proc)."""
    stats: dict[int, ProcessStat] = {}
    for stat_path in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError):
            stat = Path(stat_path).read_text()
            # The command name is in parentheses and may hold spaces: split after its closing one.
            fields = stat[stat.rindex(")") + 2 :].split()
            cpu_seconds = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_SECOND
            stats[int(stat_path.split("/")[2])] = ProcessStat(int(fields[1]), cpu_seconds)
    return stats


def tree_pids(root_pid: int, stats: dict[int, ProcessStat]) -> list[int]:
    """`root_pid` and every live descendant in `stats`."""
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.parent_pid, []).append(pid)
    found: list[int] = []
    pending = [root_pid]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def tree_cpu_seconds(root_pid: int) -> float:
    """utime+stime of `root_pid` and every live descendant (the projector child, PostgreSQL backends)."""
    stats = process_stats()
    return sum(stats[pid].cpu_seconds for pid in tree_pids(root_pid, stats) if pid in stats)


def process_cpu_seconds(pid: int) -> float:
    """utime+stime of `pid` alone (the service's own process, without the read model's child)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_SECOND


FRONT_COMMAND_MARK = b"facade.front_process"
"""On a front process's command line (facade.fronts spawns `python -m facade.front_process`)."""


def fronts_cpu_seconds(root_pid: int) -> float:
    """utime+stime of `root_pid`'s live front processes (facade.fronts), its children named by FRONT_COMMAND_MARK."""
    total = 0.0
    for pid, stat in process_stats().items():
        if stat.parent_pid == root_pid:
            with contextlib.suppress(OSError):
                if FRONT_COMMAND_MARK in Path(f"/proc/{pid}/cmdline").read_bytes():
                    total += stat.cpu_seconds
    return total


def tree_write_bytes(root_pid: int) -> int:
    """write_bytes (/proc/<pid>/io: bytes sent to the block layer) of `root_pid` and its live descendants."""
    children: dict[int, list[int]] = {}
    for stat_path in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError):
            stat = Path(stat_path).read_text()
            children.setdefault(int(stat[stat.rindex(")") + 2 :].split()[1]), []).append(int(stat_path.split("/")[2]))
    total = 0
    pending = [root_pid]
    while pending:
        pid = pending.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
        pending.extend(children.get(pid, []))
    return total


@dataclass(slots=True)
class Result:
    name: str
    concurrency: int
    rate: float
    latencies: list[float]
    errors: int
    cpu_us_per_tx: float | None = None
    notes: list[str] = field(default_factory=list)
    key: str = ""
    """Which row of a configuration ("unary16", "batch100", "stream"): pairs rows across configurations."""


def print_header() -> None:
    header = f"{'case':<52}{'conc':>5}{'tx/s':>10}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'CPU µs/tx':>10}"
    print(f"{header}{'errors':>7}{'vs no-op':>9}{'vs PG':>7}  notes")
    print("-" * 134)


def print_row(result: Result, noop_rate: float | None = None, peer_rate: float | None = None) -> None:
    lat = result.latencies
    cpu = f"{result.cpu_us_per_tx:,.0f}" if result.cpu_us_per_tx is not None else "-"
    vs_noop = f"{result.rate / noop_rate:.2f}x" if noop_rate else ""
    vs_peer = f"{result.rate / peer_rate:.2f}x" if peer_rate else ""
    print(
        f"{result.name:<52}{result.concurrency:>5}{result.rate:>10,.0f}{percentile(lat, 0.5) * 1e3:>8.1f}"
        f"{percentile(lat, 0.95) * 1e3:>8.1f}{percentile(lat, 0.99) * 1e3:>8.1f}{cpu:>10}{result.errors:>7}"
        f"{vs_noop:>9}{vs_peer:>7}  {'; '.join(result.notes)}",
        flush=True,
    )


async def load(
    name: str,
    seconds: float,
    concurrency: int,
    call: Callable[[int, int], Awaitable[int]],
    *,
    cpu_pid: int | None = None,
) -> Result:
    """Runs `concurrency` workers calling call(worker, n) for `seconds`; n counts each worker's calls."""
    latencies: list[float] = []
    done = 0
    errors = 0
    error_kinds: dict[str, int] = {}
    stop_at = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        nonlocal done, errors
        n = 0
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                completed = await call(index, n)  # Not `done += await ...`: that reads `done` before awaiting.
                done += completed
            except Exception as error:  # An error counts and the worker goes on (AioRpcError, psycopg errors).
                errors += 1
                kind = error.code().name if isinstance(error, grpc.aio.AioRpcError) else type(error).__name__
                error_kinds[kind] = error_kinds.get(kind, 0) + 1
            latencies.append(time.perf_counter() - started)
            n += 1

    with measured(cpu_pid) as server:
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return server.result(Result(name, concurrency, done / elapsed, latencies, errors), done, error_kinds)


@dataclass
class Measured:
    """A server's process tree over a row: CPU seconds and bytes written (/proc), once the row ended."""

    cpu_pid: int | None
    cpu_seconds: float = 0.0
    own_cpu_seconds: float = 0.0
    """The root process alone (the service without the read model's child)."""
    fronts_cpu_seconds: float = 0.0
    """The root's front processes (api.front_processes), together."""
    written_bytes: int = 0

    def result(self, result: Result, done: int, error_kinds: dict[str, int]) -> Result:
        """`result` with its error kinds, and its server's CPU and writes per acknowledged transaction."""
        if error_kinds:
            kinds = ", ".join(f"{kind} x{count}" for kind, count in sorted(error_kinds.items()))
            result.notes.append(f"errors: {kinds}")
        if self.cpu_pid is not None and done:
            result.cpu_us_per_tx = self.cpu_seconds / done * 1e6
            # The root's own share where the tree has more to it (the ledger service beside its read model's
            # child): not for a lone process (the no-op server) nor a root that only supervises (postmaster).
            if ROOT_SHARE_NOTED_MIN * self.cpu_seconds < self.own_cpu_seconds < self.cpu_seconds:
                result.notes.append(f"server process alone {self.own_cpu_seconds / done * 1e6:,.0f} µs/tx")
            if self.fronts_cpu_seconds > 0:
                result.notes.append(f"front processes {self.fronts_cpu_seconds / done * 1e6:,.0f} µs/tx")
            result.notes.append(f"{self.written_bytes / done:,.0f} B/tx written")
        return result


@contextlib.contextmanager
def measured(cpu_pid: int | None) -> Iterator[Measured]:
    """Measures `cpu_pid`'s process tree over the block (nothing without a pid)."""
    server = Measured(cpu_pid)
    cpu_before = tree_cpu_seconds(cpu_pid) if cpu_pid is not None else 0.0
    own_cpu_before = process_cpu_seconds(cpu_pid) if cpu_pid is not None else 0.0
    fronts_cpu_before = fronts_cpu_seconds(cpu_pid) if cpu_pid is not None else 0.0
    written_before = tree_write_bytes(cpu_pid) if cpu_pid is not None else 0
    yield server
    if cpu_pid is not None:
        server.cpu_seconds = tree_cpu_seconds(cpu_pid) - cpu_before
        server.own_cpu_seconds = process_cpu_seconds(cpu_pid) - own_cpu_before
        server.fronts_cpu_seconds = fronts_cpu_seconds(cpu_pid) - fronts_cpu_before
        server.written_bytes = tree_write_bytes(cpu_pid) - written_before


async def load_compiled(  # noqa: PLR0913  Keyword-only: what runs the row and what it is measured on.
    name: str,
    seconds: float,
    concurrency: int,
    *,
    binary: Path,
    flags: list[str],
    cpu_pid: int | None,
    connections: int = 1,
) -> Result:
    """As `load`, with the compiled generator (ledger_testkit.loadgen, -mode=closed) making the calls: `flags`
    name the target (-grpc or -dsn) and the shape (-size, -accounts, -tag, -token). A gRPC target's calls
    go over `connections` connections, round-robin (--connections); the PostgreSQL peer keeps its one
    connection per worker."""
    assert connections >= 1
    spread = [f"-connections={connections}"] if any(flag.startswith("-grpc=") for flag in flags) else []
    command = ["-mode=closed", f"-seconds={seconds}s", f"-concurrency={concurrency}", *flags, *spread]
    async with loadgen.started(binary, [command]) as (generator,):
        with measured(cpu_pid) as server:
            await generator.start()
            document = await generator.result(seconds)
    done: int = document["done"]
    error_kinds: dict[str, int] = document["errors"]
    rate = done / document["elapsed_seconds"]
    result = Result(name, concurrency, rate, document["latencies"], sum(error_kinds.values()))
    return server.result(result, done, error_kinds)


def transfer_pair(n: int) -> tuple[int, int]:
    """The (source, destination) account indexes of the n-th transfer, the same for every ledger."""
    source, destination = n % ACCOUNTS, (n * 7 + 1) % ACCOUNTS
    if source == destination:
        destination = (n + 1) % ACCOUNTS
    return source, destination


# --- The ledger service --------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Config:
    label: str
    env: dict[str, str]
    read_model: bool = True
    tree: Path | None = None
    """Another checkout whose own virtualenv's `ledger serve` runs instead (--baseline-tree)."""


CONFIGS = (
    Config("defaults", {}),  # What scripts/run.sh runs (ledger serve: 2 front processes on a 2-core host).
    Config("read model off", {"LEDGER_CLICKHOUSE__SERVE_HISTORY": "false"}, read_model=False),
)
OPTIONAL_CONFIGS = (
    # Run only when named in --configs: the embedded engine's append pipeline (off by default), one process
    # (no front processes) and N front processes (facade.fronts; `ledger serve` runs 2 when not set, on 2 cores).
    Config("append pipeline", {"LEDGER_ENGINE__APPEND_PIPELINE": "true"}),
    Config("one process", {"LEDGER_API__FRONT_PROCESSES": "0"}),
    *(Config(f"fronts {n}", {"LEDGER_API__FRONT_PROCESSES": str(n)}) for n in (1, 2, 3)),
    Config("uvloop", {"LEDGER_API__EVENT_LOOP": "uvloop"}),  # api.event_loop (off by default).
)


class LedgerServer:
    """`ledger serve` in a fresh working directory: its default relative data paths land in there."""

    def __init__(self, config: Config, profile_dir: Path | None) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="bench-api-"))
        self.port = free_port()
        self.metrics_port = free_port()
        env = dict(
            os.environ,
            LEDGER_API__PORT=str(self.port),
            LEDGER_API__HTTP_PORT=str(free_port()),
            LEDGER_OBSERVABILITY__METRICS_PORT=str(self.metrics_port),
            **config.env,
        )
        beside = Path(sys.executable).parent / "ledger"  # The virtualenv's console script, activated or not.
        if config.tree is not None:  # The baseline's own install: its code, its dependencies.
            beside = config.tree / ".venv" / "bin" / "ledger"
            assert beside.exists(), f"{beside}: run scripts/bootstrap.sh in the baseline tree first"
        command = [str(beside) if beside.exists() else shutil.which("ledger") or "ledger", "serve"]
        self._spy: subprocess.Popen[bytes] | None = None
        self._profile_name = config.label.replace(" ", "-")
        py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        if profile_dir is not None and py_spy is None:
            profile_path = profile_dir / f"{self._profile_name}.prof"
            command = [sys.executable, "-m", "cProfile", "-o", str(profile_path), "-m", "facade.cli", "serve"]
            print(f"profiling with cProfile into {profile_path}", file=sys.stderr)
        self.process = subprocess.Popen(command, env=env, cwd=self.data, stdout=subprocess.DEVNULL)
        if profile_dir is not None and py_spy is not None:
            # Collapsed stacks (one "frame;frame;... samples" line per stack): greppable, and
            # speedscope or flamegraph.pl draw them. The read model's child process is included.
            folded = profile_dir / f"{self._profile_name}.folded"
            self._spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(self.process.pid),
                    "--subprocesses",
                    "--format",
                    "raw",
                    "--output",
                    str(folded),
                ],
                stdout=subprocess.DEVNULL,
            )
            print(f"profiling with py-spy into {folded}", file=sys.stderr)

    def metrics_text(self) -> str | None:
        """The server's /metrics exposition, or None when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=1) as response:
                text: str = response.read().decode()
        except OSError:
            return None
        return text

    def engine_counters(self) -> EngineCounters | None:
        """The write path's counters now (None without metrics): see EngineCounters."""
        text = self.metrics_text()
        return EngineCounters.parse(text) if text is not None else None

    def projection_lag_seconds(self) -> float | None:
        """The change-capture lag the projector last reported (now minus the newest change inserted)."""
        text = self.metrics_text()
        if text is None:
            return None
        for line in text.splitlines():
            # The projector's sink: Projector in the service's process, RemoteProjector in its own.
            if line.startswith("ledger_change_capture_lag_seconds{") and 'Projector"}' in line:
                return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(SERVER_STOP_TIMEOUT_SECONDS)
        if self._spy is not None:
            self._spy.wait(SERVER_STOP_TIMEOUT_SECONDS)
        shutil.rmtree(self.data, ignore_errors=True)


@contextlib.contextmanager
def lag_sampler(server: LedgerServer, samples: list[float]) -> Iterator[None]:
    """Samples the projector's lag every LAG_SAMPLE_INTERVAL_SECONDS in a thread while the block runs."""
    import threading

    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(LAG_SAMPLE_INTERVAL_SECONDS):
            lag = server.projection_lag_seconds()
            if lag is not None:
                samples.append(lag)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.asynccontextmanager
async def visibility_probe(
    channel: grpc.aio.Channel, accounts: list[str], metadata: Any, tag: str, samples: list[float]
) -> AsyncIterator[None]:
    """Projection lag as a user sees it, while the block runs: every LAG_PROBE_INTERVAL_SECONDS one
    transaction is posted (each in its own task, so a slow acknowledgement does not thin the samples),
    and one poller asks the History API every LAG_PROBE_POLL_SECONDS how far the read model is projected
    (projected_until, the newest engine timestamp every table holds; rows go in in commit order). A
    sample is the time from a probe's acknowledgement to the first answer covering its committed_at_ns:
    at most a poll interval above the truth. The probe's queries are the bench's, not the workload's, but
    they are not subtracted: their CPU (~5% of a core) stays in the defaults rows' figures."""
    ledger: Any = rpc.LedgerStub(channel)
    history: Any = history_rpc.HistoryStub(channel)
    stop = asyncio.Event()
    pending: dict[int, float] = {}
    """Probes acknowledged and not yet seen: committed_at_ns -> when acknowledged (perf_counter)."""

    async def post(n: int) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            posted = await ledger.PostTransaction(transaction(accounts, f"{tag}-probe-{n}", n), metadata=metadata)
            pending[posted.committed_at_ns] = time.perf_counter()

    async def poll() -> None:
        window: dict[str, Any] = {"from": LAG_PROBE_WINDOW_FROM_NS}  # `from` is a keyword in Python.
        request = hpb.ListTransactionsRequest(filter=hpb.TransactionFilter(**window), page_size=1)
        while not stop.is_set() or pending:
            if not pending:  # Nothing to look for: no query (each one costs the read model).
                await asyncio.sleep(LAG_PROBE_POLL_SECONDS)
                continue
            with contextlib.suppress(grpc.aio.AioRpcError):
                projected = (await history.ListTransactions(request, metadata=metadata)).projected_until
                now = time.perf_counter()
                for committed in [c for c in pending if c <= projected]:
                    samples.append(now - pending.pop(committed))
                for committed in [c for c, at in pending.items() if now - at > LAG_PROBE_WAIT_SECONDS_MAX]:
                    samples.append(now - pending.pop(committed))
            await asyncio.sleep(LAG_PROBE_POLL_SECONDS)

    async def probe() -> None:
        posts: set[asyncio.Task[None]] = set()
        n = 0
        while not stop.is_set():
            task = asyncio.create_task(post(n))
            posts.add(task)
            task.add_done_callback(posts.discard)
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LAG_PROBE_INTERVAL_SECONDS)
        if posts:
            await asyncio.wait(posts)

    tasks = [asyncio.create_task(probe()), asyncio.create_task(poll())]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def transaction(accounts: list[str], key: str, n: int) -> pb.PostTransactionRequest:
    source, destination = transfer_pair(n)
    return pb.PostTransactionRequest(
        idempotency_key=key,
        legs=[
            pb.Leg(
                type=pb.LEG_TYPE_TRANSFER, from_account_id=accounts[source], to_account_id=accounts[destination],
                amount=str(1 + n % 1000), currency="USD",
            )
        ],
        metadata=pb.TransactionMetadata(source="bench", correlation_id=key),
    )  # fmt: skip


async def stream_load(  # noqa: PLR0913  Keyword-only: the load's shape after the stub and the accounts it moves.
    stub: Any, accounts: list[str], *, name: str, seconds: float, streams: int, metadata: Any, cpu_pid: int
) -> Result:
    latencies: list[float] = []
    done = 0
    stop_at = time.perf_counter() + seconds

    async def run_stream(worker: int) -> None:
        nonlocal done
        sent: asyncio.Queue[float] = asyncio.Queue()

        async def requests() -> AsyncIterator[pb.PostTransactionRequest]:
            n = 0
            while time.perf_counter() < stop_at:
                while sent.qsize() > STREAM_READ_AHEAD_MAX:  # Bounded read-ahead, like a real client.
                    await asyncio.sleep(0.001)
                await sent.put(time.perf_counter())
                yield transaction(accounts, f"s{name}-{worker}-{n}", n + worker)
                n += 1

        async for result in stub.StreamTransactions(requests(), metadata=metadata):
            latencies.append(time.perf_counter() - sent.get_nowait())
            done += 1 if result.HasField("transaction") else 0

    cpu_before = tree_cpu_seconds(cpu_pid)
    started = time.perf_counter()
    await asyncio.gather(*(run_stream(i) for i in range(streams)))
    result = Result("StreamTransactions (1 tx/msg)", streams, done / (time.perf_counter() - started), latencies, 0)
    if done:
        result.cpu_us_per_tx = (tree_cpu_seconds(cpu_pid) - cpu_before) / done * 1e6
    return result


def lag_note(samples: list[float]) -> str:
    """The visibility probe's percentiles for a row."""
    if not samples:
        return "lag: no probe answered"
    return (
        f"lag ack->visible p50 {percentile(samples, 0.5):.2f} s, p99 {percentile(samples, 0.99):.2f} s, "
        f"max {max(samples):.2f} s ({len(samples)} probes)"
    )


ROW_KINDS = ("unary", "batch", "stream")


async def bench_ledger(  # noqa: PLR0913  Keyword-only beyond the rows: the client's shape.
    config: Config,
    seconds: float,
    profile_dir: Path | None,
    rows: frozenset[str] = frozenset(ROW_KINDS),
    *,
    binary: Path | None = None,
    connections: int = 1,
) -> list[Result]:
    server = LedgerServer(config, profile_dir)
    admin = (("authorization", f"Bearer {issue_token(AuthSettings(), 'bench', SCOPES_ALL)}"),)
    # Writes as a payment service would: read + write only, so the account-ownership check runs.
    writer_token = issue_token(AuthSettings(), "bench", frozenset({SCOPE_READ, SCOPE_WRITE}))
    metadata = (("authorization", f"Bearer {writer_token}"),)
    results: list[Result] = []
    tag = config.label.replace(" ", "-")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), SERVER_START_TIMEOUT_SECONDS)
            stub: Any = rpc.LedgerStub(channel)
            accounts: list[str] = []
            for i in range(ACCOUNTS):
                request = pb.CreateAccountRequest(
                    currency="USD", external_reference=f"acct-{i}", type=pb.ACCOUNT_TYPE_OVERDRAFT_ALLOWED
                )
                accounts.append((await stub.CreateAccount(request, metadata=admin)).account_id)
            pid = server.process.pid
            target = [f"-grpc=127.0.0.1:{server.port}", f"-token={writer_token}", f"-accounts={','.join(accounts)}"]
            target.append(f"-tag={tag}")

            @contextlib.asynccontextmanager
            async def probed(row: str) -> AsyncIterator[list[float]]:
                """The visibility probe around a row (read model on), its samples as the row's note."""
                samples: list[float] = []
                if not config.read_model:
                    yield samples
                    return
                async with visibility_probe(channel, accounts, admin, f"{tag}-{row}", samples):
                    yield samples

            lag_samples: list[float] = []
            with lag_sampler(server, lag_samples):
                for concurrency in UNARY_CONCURRENCY if "unary" in rows else ():

                    async def unary_call(worker: int, n: int, concurrency: int = concurrency) -> int:
                        key = f"{tag}-u{concurrency}-{worker}-{n}"
                        await stub.PostTransaction(transaction(accounts, key, n + worker), metadata=metadata)
                        return 1

                    name = f"PostTransaction (1 tx/RPC) [{config.label}]"
                    engine_before = await asyncio.to_thread(server.engine_counters)
                    async with probed(f"u{concurrency}") as probes:
                        if binary is not None:
                            flags = [*target, "-size=0"]
                            row = await load_compiled(
                                name,
                                seconds,
                                concurrency,
                                binary=binary,
                                flags=flags,
                                cpu_pid=pid,
                                connections=connections,
                            )
                        else:
                            row = await load(name, seconds, concurrency, unary_call, cpu_pid=pid)
                        results.append(row)
                    results[-1].key = f"unary{concurrency}"
                    engine_after = await asyncio.to_thread(server.engine_counters)
                    if engine_before is not None and engine_after is not None:
                        results[-1].notes.append(engine_after.note(engine_before))
                    if config.read_model:
                        results[-1].notes.append(lag_note(probes))
                for size, concurrency in BATCHES if "batch" in rows else ():

                    async def batch_call(worker: int, n: int, size: int = size, concurrency: int = concurrency) -> int:
                        request = pb.PostTransactionsRequest(
                            transactions=[
                                transaction(accounts, f"{tag}-b{size}x{concurrency}-{worker}-{n}-{i}", n * size + i)
                                for i in range(size)
                            ]
                        )
                        response = await stub.PostTransactions(request, metadata=metadata)
                        return sum(1 for r in response.results if r.HasField("transaction"))

                    name = f"PostTransactions ({size} tx/RPC) [{config.label}]"
                    async with probed(f"b{size}") as probes:
                        if binary is not None:
                            flags = [*target, f"-size={size}"]
                            row = await load_compiled(
                                name,
                                seconds,
                                concurrency,
                                binary=binary,
                                flags=flags,
                                cpu_pid=pid,
                                connections=connections,
                            )
                        else:
                            row = await load(name, seconds, concurrency, batch_call, cpu_pid=pid)
                        results.append(row)
                    results[-1].key = f"batch{size}"
                    if config.read_model:
                        results[-1].notes.append(lag_note(probes))
                if "stream" in rows:
                    async with probed("stream") as probes:
                        stream = await stream_load(
                            stub, accounts, name=tag, seconds=seconds, streams=STREAMS, metadata=metadata, cpu_pid=pid
                        )
                    stream.name = f"{stream.name} [{config.label}]"
                    stream.key = "stream"
                    if config.read_model:
                        stream.notes.append(lag_note(probes))
                    results.append(stream)
            if lag_samples and results:
                results[-1].notes.append(
                    f"projector's lag at insert p99 {percentile(lag_samples, 0.99):.2f} s, "
                    f"max {max(lag_samples):.2f} s ({len(lag_samples)} samples)"
                )
    finally:
        server.stop()
    return results


# --- The no-op baseline --------------------------------------------------------------------------------


class NoopLedger(rpc.LedgerServicer):
    async def PostTransaction(self, _request: Any, _context: Any) -> pb.Transaction:  # noqa: N802
        return pb.Transaction()


async def noop_server(port: int) -> None:
    server = grpc.aio.server()
    rpc.add_LedgerServicer_to_server(NoopLedger(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def bench_noop(seconds: float, *, binary: Path | None = None, connections: int = 1) -> list[Result]:
    port = free_port()
    # In its own process like the real server (in this one it would share the client's event loop).
    process = subprocess.Popen([sys.executable, __file__, "--noop-server", str(port)])
    results: list[Result] = []
    accounts = [f"{i:032x}" for i in range(ACCOUNTS)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), SERVER_START_TIMEOUT_SECONDS)
            stub: Any = rpc.LedgerStub(channel)
            for concurrency in UNARY_CONCURRENCY:

                async def noop_call(worker: int, n: int) -> int:
                    await stub.PostTransaction(transaction(accounts, f"noop-{worker}-{n}", n))
                    return 1

                name = "no-op grpc.aio unary (baseline)"
                if binary is not None:
                    flags = [f"-grpc=127.0.0.1:{port}", f"-accounts={','.join(accounts)}", "-tag=noop", "-size=0"]
                    row = await load_compiled(
                        name,
                        seconds,
                        concurrency,
                        binary=binary,
                        flags=flags,
                        cpu_pid=process.pid,
                        connections=connections,
                    )
                else:
                    row = await load(name, seconds, concurrency, noop_call, cpu_pid=process.pid)
                results.append(row)
    finally:
        process.terminate()
        process.wait(SERVER_STOP_TIMEOUT_SECONDS)
    return results


# --- The PostgreSQL peer -------------------------------------------------------------------------------

PG_SCHEMA = (
    "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL DEFAULT 0)",
    "CREATE TABLE transfers (id bigserial PRIMARY KEY, idempotency_key text NOT NULL UNIQUE, "
    "debit_account_id bigint NOT NULL REFERENCES accounts, credit_account_id bigint NOT NULL REFERENCES accounts, "
    "amount bigint NOT NULL CHECK (amount > 0), created_at timestamptz NOT NULL DEFAULT now())",
)
PG_BATCHES = BATCHES[:1]
"""The batch rows the peer runs too (a 1000-transfer call takes it seconds: longer than a row)."""
PG_LOCK = "SELECT id FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
"""Both accounts locked in id order: concurrent transfers between the same pair never deadlock."""
PG_INSERT = (
    "INSERT INTO transfers (idempotency_key, debit_account_id, credit_account_id, amount) VALUES (%s, %s, %s, %s)"
)
PG_DEBIT = "UPDATE accounts SET balance = balance - %s WHERE id = %s"
PG_CREDIT = "UPDATE accounts SET balance = balance + %s WHERE id = %s"


class PostgresCluster:
    """A throwaway PostgreSQL cluster (fsync on, the defaults) in a temp dir on a free port."""

    def __init__(self) -> None:
        found = subprocess.run(
            ["bash", str(ROOT / "scripts" / "install_postgres.sh")], capture_output=True, text=True, check=True
        )
        bindir = Path(found.stdout.strip())
        self.directory = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.port = free_port()
        # initdb refuses to run as root: run the cluster as the postgres user the Debian package created.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        data = self.directory / "data"
        subprocess.run(
            [*self._as, str(bindir / "initdb"), "-D", str(data), "-U", "bench", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        self._pg_ctl = [*self._as, str(bindir / "pg_ctl"), "-D", str(data)]
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=300"
        subprocess.run(
            [*self._pg_ctl, "-o", options, "-l", str(self.directory / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        self.pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        self.dsn = f"host=127.0.0.1 port={self.port} user=bench dbname=postgres"

    def stop(self) -> None:
        subprocess.run([*self._pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


async def bench_postgres(seconds: float, *, binary: Path | None = None) -> list[Result]:
    import psycopg

    cluster = PostgresCluster()
    results: list[Result] = []
    try:
        async with await psycopg.AsyncConnection.connect(cluster.dsn, autocommit=True) as setup:
            for statement in PG_SCHEMA:
                await setup.execute(statement)
            await setup.execute("INSERT INTO accounts (id) SELECT generate_series(0, %s)", (ACCOUNTS - 1,))
        concurrency_max = max(*UNARY_CONCURRENCY, *(c for _, c in PG_BATCHES))
        connections = [await psycopg.AsyncConnection.connect(cluster.dsn) for _ in range(concurrency_max)]

        async def post(connection: psycopg.AsyncConnection[Any], key: str, n: int) -> None:
            source, destination = transfer_pair(n)
            amount = 1 + n % 1000
            async with connection.transaction():
                await connection.execute(PG_LOCK, ([source, destination],))
                await connection.execute(PG_INSERT, (key, source, destination, amount))
                await connection.execute(PG_DEBIT, (amount, source))
                await connection.execute(PG_CREDIT, (amount, destination))

        # The compiled client's own connections (one per worker, as here): the peer's accounts are 0..63.
        peer = [f"-dsn={cluster.dsn}", f"-accounts={','.join(str(i) for i in range(ACCOUNTS))}"]
        try:
            for concurrency in UNARY_CONCURRENCY:

                async def unary_call(worker: int, n: int, concurrency: int = concurrency) -> int:
                    await post(connections[worker], f"u{concurrency}-{worker}-{n}", n + worker)
                    return 1

                name = "PostgreSQL peer: 1 transfer per call"
                if binary is not None:
                    flags = [*peer, "-size=0"]
                    row = await load_compiled(
                        name, seconds, concurrency, binary=binary, flags=flags, cpu_pid=cluster.pid
                    )
                else:
                    row = await load(name, seconds, concurrency, unary_call, cpu_pid=cluster.pid)
                results.append(row)
            for size, concurrency in PG_BATCHES:

                async def batch_call(worker: int, n: int, size: int = size, concurrency: int = concurrency) -> int:
                    for i in range(size):  # One database transaction per transfer, like the ledger's results.
                        await post(connections[worker], f"b{size}x{concurrency}-{worker}-{n}-{i}", n * size + i)
                    return size

                name = f"PostgreSQL peer: {size} transfers per call"
                if binary is not None:
                    flags = [*peer, f"-size={size}"]
                    row = await load_compiled(
                        name, seconds, concurrency, binary=binary, flags=flags, cpu_pid=cluster.pid
                    )
                else:
                    row = await load(name, seconds, concurrency, batch_call, cpu_pid=cluster.pid)
                results.append(row)
        finally:
            for connection in connections:
                await connection.close()
    finally:
        cluster.stop()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per row")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR", help="profile the servers into DIR")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL peer")
    parser.add_argument(
        "--rows",
        default=",".join(ROW_KINDS),
        help=f"which rows, comma-separated, of: {', '.join(ROW_KINDS)} (a shorter run on a busy machine)",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        metavar="DIR",
        help="also run the defaults with the server of another checkout (e.g. `git worktree add DIR <rev>` + "
        "scripts/bootstrap.sh there), first, labelled 'baseline': before/after in one run",
    )
    parser.add_argument(
        "--baseline-last",
        action="store_true",
        help="run the baseline after the other configurations (alternate the order between runs: the host drifts)",
    )
    parser.add_argument(
        "--configs",
        default=",".join(config.label for config in CONFIGS),
        help="which ledger configurations, comma-separated labels",
    )
    parser.add_argument(
        "--client",
        choices=("go", "python"),
        default="go" if shutil.which("go") else "python",
        help="the compiled client for the unary and batch rows and both references (scripts/loadgen; the "
        "default with `go` on PATH) or the Python one (grpc.aio, psycopg); the stream row is always Python",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=1,
        help="gRPC connections the compiled client spreads each row's calls over, round-robin, in EVERY row of "
        "the run (the no-op baseline and each configuration alike; the PostgreSQL peer keeps one connection per "
        "worker): a payment service talks over several, and with SO_REUSEPORT (front processes) each lands on "
        "one listener. Default 1 (the Python client's one channel; the stream row stays on one)",
    )
    args = parser.parse_args()
    if args.connections < 1 or (args.connections > 1 and args.client != "go"):
        parser.error("--connections N >= 1; above 1 only with --client go")
    binary = loadgen.build_loadgen() if args.client == "go" else None
    if args.client == "go" and binary is None:
        parser.error("--client go needs the Go toolchain (`go` on PATH)")
    rows = frozenset(args.rows.split(","))
    configs = [config for config in (*CONFIGS, *OPTIONAL_CONFIGS) if config.label in args.configs.split(",")]
    assert rows <= set(ROW_KINDS) and configs, "unknown --rows or --configs"
    if args.baseline_tree is not None:
        baseline_config = Config("baseline", {}, tree=args.baseline_tree.resolve())
        configs.insert(len(configs) if args.baseline_last else 0, baseline_config)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print_header()
    print(
        f"client: {args.client}"
        + (f" ({binary})" if binary is not None else "")
        + f", {args.connections} gRPC connection(s)"
    )
    noop = await bench_noop(args.seconds, binary=binary, connections=args.connections) if "unary" in rows else []
    noop_rates = {result.concurrency: result.rate for result in noop}
    for result in noop:
        print_row(result)
    peer: list[Result] = [] if args.no_postgres else await bench_postgres(args.seconds, binary=binary)
    for result in peer:
        print_row(result)
    peer_unary = {result.concurrency: result.rate for result in peer[: len(UNARY_CONCURRENCY)]}
    peer_batches = peer[len(UNARY_CONCURRENCY) :]
    peer_batch = {
        (size, result.concurrency): result.rate for (size, _), result in zip(PG_BATCHES, peer_batches, strict=False)
    }
    floor_met: list[str] = []
    rates: dict[str, dict[str, float]] = {}
    for config in configs:
        results = await bench_ledger(
            config, args.seconds, args.profile, rows, binary=binary, connections=args.connections
        )
        rates[config.label] = {result.key: result.rate for result in results}
        for result in results:
            if result.key.startswith("unary"):
                print_row(result, noop_rates.get(result.concurrency), peer_unary.get(result.concurrency))
            elif result.key.startswith("batch"):
                size = int(result.key.removeprefix("batch"))
                print_row(result, None, peer_batch.get((size, result.concurrency)))
                p99 = percentile(result.latencies, 0.99)
                if result.rate >= FLOOR_TX_PER_SECOND and p99 < FLOOR_LATENCY_SECONDS_P99 and not result.errors:
                    floor_met.append(f"{config.label}, {size} tx/RPC x{result.concurrency}: {result.rate:,.0f} tx/s")
            else:
                print_row(result)
    on, off = (rates.get(config.label) for config in CONFIGS)
    if on and off:
        ratios = [f"{key} {on[key] / off[key]:.2f}" for key in on if off.get(key)]
        print(f"\ndefaults ÷ read model off (tx/s): {', '.join(ratios)}")
    baseline = rates.get("baseline")
    for label, measured in rates.items():
        if baseline and label != "baseline":
            ratios = [f"{key} {measured[key] / baseline[key]:.2f}" for key in measured if baseline.get(key)]
            print(f"{label} ÷ baseline ({args.baseline_tree}) (tx/s): {', '.join(ratios)}")
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print()
    verdict = ("met by " + "; ".join(floor_met)) if floor_met else "NOT met"
    floor = f"batched >= {FLOOR_TX_PER_SECOND:,} tx/s with p99 < {FLOOR_LATENCY_SECONDS_P99 * 1e3:.0f} ms"
    print(f"Floor ({floor}): {verdict}")
    print("Durable: every acknowledged ledger write was fsynced by the engine journal and the metadata store;")
    print("every PostgreSQL transfer was committed with fsync on. CPU µs/tx: the server's process tree (/proc).")
    print("Client and servers share this machine's cores; conc = concurrent calls (streams for the stream rows).")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--noop-server":
        asyncio.run(noop_server(int(sys.argv[2])))
    else:
        asyncio.run(main())
