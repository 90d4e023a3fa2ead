#!/usr/bin/env python3
"""CPU per call of the front processes (facade.fronts) and of the engine's process, measured apart.

`bench_api.py` gives a configuration's whole process tree per transaction; with front processes the
question is often what one front spends per forwarded call (the gRPC edge, the interceptors, the relay
frame), which the tree's figure mixes with the engine's process. This starts `ledger serve` with
`api.front_processes` = N and the read model off (the write path alone), drives single PostTransactions
with the compiled generator (ledger_testkit.loadgen) and reads utime+stime (/proc/<pid>/stat) of each
process of the tree over the row: the fronts (`facade.front_process` on their command line) and the
engine's process (the root).

Same-run A/B: `--tree DIR` (repeatable) runs another checkout's own virtualenv as well, alternating
with this one `--pairs` times (the host drifts; only pairs from one run compare).

    python scripts/bench_fronts.py [--tree /tmp/base] [--pairs 2] [--seconds 4] [--concurrency 64]
        [--fronts 2] [--connections 2] [--profile DIR] [--spy DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.gen.ledger.v1 import ledger_pb2_grpc as rpc
from facade.auth import SCOPE_READ, SCOPE_WRITE, SCOPES_ALL, issue_token
from facade.settings import AuthSettings
from ledger_testkit import loadgen
from scripts.bench_api import (
    ACCOUNTS,
    SERVER_START_TIMEOUT_SECONDS,
    Config,
    LedgerServer,
    process_stats,
    tree_pids,
)

FRONT_MARK = "facade.front_process"
PAIRS_MAX = 20
SPY_WAIT_SECONDS = 30.0
RUN_SECONDS_MAX = 180.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One process's utime+stime (seconds) and whether it is a front."""

    cpu_seconds: float
    front: bool


def _tree(root_pid: int) -> dict[int, Sample]:
    """Every live process of `root_pid`'s tree, the root included."""
    stats = process_stats()
    found: dict[int, Sample] = {}
    for pid in tree_pids(root_pid, stats):
        if pid not in stats:
            continue
        command = b""
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        found[pid] = Sample(stats[pid].cpu_seconds, FRONT_MARK.encode() in command)
    return found


def _spies(directory: Path | None, label: str, pids: list[int], seconds: float) -> list[subprocess.Popen[bytes]]:
    """py-spy (GIL samples only, native frames: grpc's cython) on each front for the row, DIR/<label>-<pid>.folded."""
    if directory is None:
        return []
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert py_spy is not None, "--spy needs py-spy"
    name = label.replace(" ", "-")
    return [
        subprocess.Popen(
            [py_spy, "record", "-g", "--native", "-r", "250", "-d", str(int(seconds)), "-f", "raw",
             "-o", str(directory / f"{name}-{pid}.folded"), "--pid", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    rate: float
    done: int
    front_us: float
    engine_us: float
    other_us: float
    p99_ms: float


async def run_one(label: str, tree: Path | None, args: argparse.Namespace, binary: Path) -> Row:
    env = {"LEDGER_API__FRONT_PROCESSES": str(args.fronts), "LEDGER_CLICKHOUSE__SERVE_HISTORY": "false"}
    server = LedgerServer(Config(label, env, read_model=False, tree=tree), args.profile)
    admin = (("authorization", f"Bearer {issue_token(AuthSettings(), 'bench', SCOPES_ALL)}"),)
    writer_token = issue_token(AuthSettings(), "bench", frozenset({SCOPE_READ, SCOPE_WRITE}))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), SERVER_START_TIMEOUT_SECONDS)
            stub: Any = rpc.LedgerStub(channel)
            accounts = []
            for i in range(ACCOUNTS):
                request = pb.CreateAccountRequest(
                    currency="USD", external_reference=f"acct-{i}", type=pb.ACCOUNT_TYPE_OVERDRAFT_ALLOWED
                )
                accounts.append((await stub.CreateAccount(request, metadata=admin)).account_id)
        flags = [
            "-mode=closed",
            f"-seconds={args.seconds}s",
            f"-concurrency={args.concurrency}",
            f"-grpc=127.0.0.1:{server.port}",
            f"-token={writer_token}",
            f"-accounts={','.join(accounts)}",
            f"-tag={label.replace(' ', '-')}",
            "-size=0",
            f"-connections={args.connections}",
        ]
        async with loadgen.started(binary, [flags]) as (generator,):
            before = _tree(server.process.pid)
            spies = _spies(args.spy, label, [pid for pid, sample in before.items() if sample.front], args.seconds)
            await generator.start()
            document = await generator.result(args.seconds)
            after = _tree(server.process.pid)
            for spy in spies:
                spy.wait(SPY_WAIT_SECONDS)
    finally:
        server.stop()
    done: int = document["done"]
    assert done, document
    spent = {pid: sample.cpu_seconds - before[pid].cpu_seconds for pid, sample in after.items() if pid in before}
    front = sum(cpu for pid, cpu in spent.items() if after[pid].front)
    engine = spent.get(server.process.pid, 0.0)
    other = sum(spent.values()) - front - engine
    latencies = sorted(document["latencies"])
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
    return Row(
        label,
        done / document["elapsed_seconds"],
        done,
        front / done * 1e6,
        engine / done * 1e6,
        other / done * 1e6,
        p99 * 1e3,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to alternate with")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--fronts", type=int, default=2)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR", help="bench_api's py-spy of the tree")
    parser.add_argument("--spy", type=Path, default=None, metavar="DIR", help="py-spy -g --native of each front")
    args = parser.parse_args()
    assert 1 <= args.pairs <= PAIRS_MAX
    binary = loadgen.build_loadgen()
    assert binary is not None, "needs the Go toolchain (scripts/loadgen)"
    for directory in (args.profile, args.spy):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
    trees: list[tuple[str, Path | None]] = [("this", None)]
    trees += [(f"tree {tree.name}", tree.resolve()) for tree in args.tree]
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"{'server':<28}{'tx/s':>8}{'p99 ms':>8}{'fronts µs/call':>16}{'engine µs/call':>16}{'other':>7}")
    for pair in range(args.pairs):
        order = trees if pair % 2 == 0 else list(reversed(trees))
        for label, tree in order:
            row = await asyncio.wait_for(run_one(label, tree, args, binary), RUN_SECONDS_MAX)
            print(
                f"{row.label:<28}{row.rate:>8,.0f}{row.p99_ms:>8.1f}{row.front_us:>16,.0f}{row.engine_us:>16,.0f}"
                f"{row.other_us:>7,.0f}",
                flush=True,
            )
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    asyncio.run(main())
