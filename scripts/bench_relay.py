#!/usr/bin/env python3
"""The relay's own CPU per call in the engine's process (facade.api.relay, api.front_processes > 0).

One process, no fronts, no gRPC on the measured path: a real service (embedded engine, temp dir), one
account; then rounds of `--batch` GetBalance calls (a read: no batcher, no journal, so the relay's share
is not lost in a write's noise) run two ways, alternating:

- direct: a task per call running the servicer method (LedgerServicer.GetBalance) and serialising its
  answer, as grpc.aio's handler does in the single process;
- relay: the same calls as pre-encoded CALL frames fed to a relay connection (data_received, as one
  socket read would bring them) until every REPLY frame is written (to a transport that keeps them).

relay - direct = what the relay adds per call (decoding the frame, admission, the task, the context,
encoding and packing the reply). CPU is this process's (time.process_time).

    python scripts/bench_relay.py [--calls 20000] [--batch 64]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from facade.api import _frames
from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.api.relay import RelayServer, _Connection
from facade.api.servicer import LedgerServicer
from facade.app import start
from facade.auth import Principal, current_principal
from facade.operations import ledger as ops
from facade.settings import (
    ApiSettings,
    AuthSettings,
    ClickHouseSettings,
    EngineSettings,
    ObservabilitySettings,
    Settings,
)

ROUNDS = 6
"""Alternating direct/relay rounds (the host's speed drifts: interleaved, not one after the other)."""


class _Kept(asyncio.Transport):
    """A transport that keeps what is written (the relay's replies)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        raise AssertionError("the relay closed its connection")


class _NoDeadline:
    def time_remaining(self) -> None:
        return None


async def _direct(servicer: LedgerServicer, principal: Principal, request: Any, calls: int, batch: int) -> float:
    async def one() -> bytes:
        current_principal.set(principal)
        return bytes((await servicer.GetBalance(request, _NoDeadline())).SerializeToString())  # type: ignore[arg-type]

    begun = time.process_time()
    for _ in range(calls // batch):
        await asyncio.gather(*(one() for _ in range(batch)))
    return time.process_time() - begun


async def _relayed(relay: RelayServer, principal: Principal, body: bytes, calls: int, batch: int) -> float:
    method = _frames.method_index("/ledger.v1.Ledger/GetBalance")
    connection = _Connection(relay)
    transport = _Kept()
    connection.connection_made(transport)
    ids = iter(range(1, calls + 1))
    reads = [
        b"".join(
            _frames.encode_call(
                next(ids),
                method,
                deadline=None,
                principal=principal,
                request_id="r",
                correlation_id="",
                body=body,
            )
            for _ in range(batch)
        )
        for _ in range(calls // batch)
    ]  # What the front sends, encoded before the clock starts: the engine's process's share is measured.
    begun = time.process_time()
    for data in reads:
        before = transport.written
        connection.data_received(data)
        while connection._tasks or transport.written == before:  # Every answer of the batch written.
            await asyncio.sleep(0)
    return time.process_time() - begun


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        settings = Settings(
            engine=EngineSettings(data_dir=root / "engine"),
            api=ApiSettings(port=0, metadata_db=root / "metadata.sqlite3", http_port=-1, sql_port=-1),
            auth=AuthSettings(mode="dev"),
            observability=ObservabilitySettings(metrics_port=0),
            clickhouse=ClickHouseSettings(serve_history=False, chdb_path=root / "ch", projector_checkpoint=root / "p"),
        )
        running = await start(settings)
        try:
            principal = Principal("client-a", frozenset({"ledger.read", "ledger.write"}))
            created = pb.CreateAccountRequest(
                currency="USD", external_reference="bench", owner="client-a", type=pb.ACCOUNT_TYPE_NO_OVERDRAFT
            )
            account = await ops.create_account(running.service, principal, created, None)
            request = pb.GetBalanceRequest(account_id=account.account_id)
            servicer = LedgerServicer(running.service)
            relay = RelayServer(running.service, servicer, None)
            body = request.SerializeToString()
            direct_seconds: list[float] = []
            relay_seconds: list[float] = []
            for _ in range(ROUNDS):
                direct_seconds.append(await _direct(servicer, principal, request, args.calls, args.batch))
                relay_seconds.append(await _relayed(relay, principal, body, args.calls, args.batch))
        finally:
            await running.stop()
    direct_us = min(direct_seconds) / args.calls * 1e6
    relay_us = min(relay_seconds) / args.calls * 1e6
    print(f"GetBalance, batches of {args.batch}, best of {ROUNDS} rounds of {args.calls} calls (CPU µs/call):")
    print(f"  direct (servicer + serialise)  {direct_us:7.1f}")
    print(f"  through the relay              {relay_us:7.1f}")
    print(f"  the relay's own                {relay_us - direct_us:7.1f}")


if __name__ == "__main__":
    asyncio.run(main())
