"""Subprocess for the pipelined crash test: the async EmbeddedEngine with SUBMITTERS batches in flight and
every append's header step on the journal's header thread, until killed.

Batch n is _crash_writer.batch_transfers(n, ...) (ids (n << 32) + i). Batches reach the engine's thread in
number order (each submitter takes the next number and hands it over before it awaits). When a batch's
answer arrives the writer prints "acked n" and flushes: answers arrive in the order they are delivered, so
the parent sees both which batches were acknowledged before the SIGKILL and in which order.
Usage: python _pipeline_writer.py DATA_DIR FIRST_BATCH ACCOUNTS BATCH_SIZE SUBMITTERS [MIRROR_DIR]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, CreateAccountStatus, CreateTransferStatus
from tests.engine._crash_writer import CODE, LEDGER, batch_transfers


def _always(_engine: EmbeddedEngine) -> bool:
    return True


async def main() -> None:
    directory, first_batch, accounts, size, submitters = Path(sys.argv[1]), *map(int, sys.argv[2:6])
    mirror = Path(sys.argv[6]) if len(sys.argv) > 6 else None
    # Every append overlaps (its header step on the header thread), whether or not a call is waiting.
    EmbeddedEngine._work_waiting = _always  # type: ignore[method-assign,assignment]
    engine = await EmbeddedEngine.open(directory, mirror_dir=mirror, append_pipeline=True)
    results = await engine.create_accounts([Account(id=i, ledger=LEDGER, code=CODE) for i in range(1, accounts + 1)])
    assert all(r.status in (CreateAccountStatus.CREATED, CreateAccountStatus.EXISTS) for r in results)
    next_batch = first_batch

    async def submitter() -> None:
        nonlocal next_batch
        while True:
            batch = next_batch
            next_batch += 1
            results = await engine.create_transfers(batch_transfers(batch, accounts, size))
            assert all(r.status == CreateTransferStatus.CREATED for r in results), batch
            sys.stdout.write(f"acked {batch}\n")
            sys.stdout.flush()

    await asyncio.gather(*(submitter() for _ in range(submitters)))


if __name__ == "__main__":
    asyncio.run(main())
