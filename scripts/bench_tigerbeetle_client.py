#!/usr/bin/env python3
"""Benchmark the TigerBeetle backend's Python-side cost per transfer: the client's public path against
the adapter's pre-encoded one.

The official client (`tigerbeetle` 0.17) converts each event to a ctypes struct in Python
(`CTransfer.from_param`: twelve range checks and six u128 splits) and each result back to a dataclass.
TigerBeetleEngine instead encodes transfers with facade.engine.codec (TigerBeetle's 128-byte layouts)
and hands them to the client's packet path (`ClientAsync._submit`), decoding the 16-byte results with
struct. This measures, per transfer, on the same machine in the same run:
- `public`: our Transfer -> tb.Transfer -> client.create_transfers, step by step (what the adapter did
  before);
- `encoded`: what the adapter does now (validation, codec, one copy per event, result decode).
With `--addresses` (a running cluster, id 0), also end to end: transfers/s through the public methods
and through TigerBeetleEngine, both in requests the cluster accepts.

    python scripts/bench_tigerbeetle_client.py [--transfers 8189] [--addresses 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import tigerbeetle as tb
from tigerbeetle import bindings

from facade.engine import tigerbeetle as adapter
from facade.engine.codec import encode_transfers
from facade.engine.types import (
    BATCH_EVENTS_MAX,
    Account,
    CreateTransferResult,
    CreateTransferStatus,
    Transfer,
    validate_transfers,
)

REPEATS = 5
"""Each micro-measurement is the best of this many runs (the machine is shared)."""
ROUNDS_MAX = 20
"""End-to-end rounds per path, whatever the cluster's speed."""
_RESULT = struct.Struct("<QI4x")
_STATUS = {status.value: status for status in CreateTransferStatus}


def to_client(t: Transfer) -> Any:
    return tb.Transfer(
        id=t.id, debit_account_id=t.debit_account_id, credit_account_id=t.credit_account_id, amount=t.amount,
        pending_id=t.pending_id, user_data_128=t.user_data_128, user_data_64=t.user_data_64,
        user_data_32=t.user_data_32, timeout=t.timeout, ledger=t.ledger, code=t.code,
        flags=tb.TransferFlags(int(t.flags)), timestamp=t.timestamp,
    )  # fmt: skip


def transfers_random(count: int, accounts: list[int], ledger: int) -> list[Transfer]:
    result = []
    for _ in range(count):
        debit, credit = random.sample(accounts, 2)
        result.append(
            Transfer(
                id=tb.id(), debit_account_id=debit, credit_account_id=credit, amount=random.randint(1, 1000),
                ledger=ledger, code=1,
            )
        )  # fmt: skip
    return result


def per_transfer_us(count: int, function: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def micro(count: int) -> None:
    transfers = transfers_random(count, [tb.id() for _ in range(100)], 1)
    converted = [to_client(t) for t in transfers]
    results = (bindings.CCreateTransferResult * count)()
    for index in range(count):
        results[index].timestamp = index + 1
        results[index].status = CreateTransferStatus.CREATED.value
    pointer = ctypes.cast(results, ctypes.POINTER(bindings.CCreateTransferResult))
    decoded = [r.to_python() for r in pointer[0:count]]

    def client_encode() -> object:
        return (bindings.CTransfer * count)(*map(bindings.CTransfer.from_param, converted))

    def client_decode() -> object:
        return [r.to_python() for r in pointer[0:count]]

    def adapter_results() -> object:
        return [CreateTransferResult(r.timestamp, CreateTransferStatus(int(r.status))) for r in decoded]

    def encoded() -> object:
        validate_transfers(transfers)
        events = adapter._events(encode_transfers(transfers), adapter.EVENT_SIZE_TRANSFER)
        return (adapter._CEvent * len(events))(*map(adapter._CEvent.from_param, events))

    def encoded_results() -> object:
        raw = [r.to_python() for r in ctypes.cast(results, ctypes.POINTER(adapter._CCreateResult))[0:count]]
        return [CreateTransferResult(t, _STATUS[s]) for t, s in _RESULT.iter_unpack(b"".join(raw))]

    steps = {
        "validate_transfers": lambda: validate_transfers(transfers),
        "Transfer -> tb.Transfer": lambda: [to_client(t) for t in transfers],
        "client: CTransfer.from_param + array": client_encode,
        "client: results to_python": client_decode,
        "results -> CreateTransferResult": adapter_results,
    }
    print(f"per transfer, {count} transfers, best of {REPEATS} (us)")
    total = 0.0
    for name, function in steps.items():
        cost = per_transfer_us(count, function)
        total += cost
        print(f"  public   {name:<40} {cost:6.2f}")
    print(f"  public   {'total':<40} {total:6.2f}")
    print(f"  encoded  {'validate + codec + one copy per event':<40} {per_transfer_us(count, encoded):6.2f}")
    print(f"  encoded  {'results':<40} {per_transfer_us(count, encoded_results):6.2f}")


async def end_to_end(addresses: str, count: int) -> None:
    engine = adapter.TigerBeetleEngine(cluster_id=0, addresses=addresses)
    client = tb.ClientAsync(cluster_id=0, replica_addresses=addresses)
    try:
        ledger = random.randint(1, 1 << 31)
        accounts = [Account(id=tb.id(), ledger=ledger, code=1) for _ in range(100)]
        await engine.create_accounts(accounts)
        ids = [a.id for a in accounts]
        await engine.create_transfers(transfers_random(count, ids, ledger))  # Learns the request size.
        chunk = engine._limit.events_max(adapter.EVENT_SIZE_TRANSFER)
        elapsed = {"public": 0.0, "encoded": 0.0}
        for _ in range(ROUNDS_MAX):  # Alternating, so both paths see the same load on a shared machine.
            for name in elapsed:
                batch = transfers_random(count, ids, ledger)
                started = time.perf_counter()
                if name == "encoded":
                    statuses = [r.status for r in await engine.create_transfers(batch)]
                else:
                    statuses = []
                    for start in range(0, count, chunk):
                        results = await client.create_transfers([to_client(t) for t in batch[start : start + chunk]])
                        statuses += [CreateTransferStatus(int(r.status)) for r in results]
                elapsed[name] += time.perf_counter() - started
                assert statuses == [CreateTransferStatus.CREATED] * count
        for name, seconds in elapsed.items():
            per_transfer = seconds / ROUNDS_MAX / count * 1e6
            print(f"end to end {name:<8} {ROUNDS_MAX * count / seconds:9.0f} transfers/s ({per_transfer:.2f} us each)")
    finally:
        await client.close()
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=BATCH_EVENTS_MAX)
    parser.add_argument("--addresses", default="", help="a running TigerBeetle cluster (cluster id 0)")
    args = parser.parse_args()
    assert 0 < args.transfers <= BATCH_EVENTS_MAX
    micro(args.transfers)
    if args.addresses:
        asyncio.run(end_to_end(args.addresses, args.transfers))


if __name__ == "__main__":
    main()
