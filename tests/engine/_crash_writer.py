"""Subprocess for the crash test: writes batches to an embedded ledger until killed.

Batch n holds transfers with ids (n << 32) + i. After each batch is acknowledged (durable) it prints
"acked n" and flushes, so the parent knows exactly which batches were acknowledged before SIGKILL.
Usage: python _crash_writer.py DATA_DIR FIRST_BATCH ACCOUNTS BATCH_SIZE [MIRROR_DIR]
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from facade.engine.embedded import EmbeddedLedger
from facade.engine.types import Account, CreateAccountStatus, CreateTransferStatus, Transfer, TransferFlags

LEDGER = 1
CODE = 1


def batch_transfers(batch: int, accounts: int, size: int) -> list[Transfer]:
    """Deterministic from the batch number, so the parent can recompute it. Every third transfer
    opens a linked chain of three: chains must land whole or not at all."""
    rng = random.Random(batch)
    transfers = []
    for index in range(size):
        debit = rng.randint(1, accounts)
        credit = debit % accounts + 1
        linked = index % 3 != 2 and index != size - 1
        transfers.append(
            Transfer(
                id=(batch << 32) + index,
                debit_account_id=debit,
                credit_account_id=credit,
                amount=rng.randint(1, 1_000_000),
                ledger=LEDGER,
                code=CODE,
                flags=TransferFlags.LINKED if linked else TransferFlags.NONE,
            )
        )
    return transfers


def main() -> None:
    directory, first_batch, accounts, size = Path(sys.argv[1]), *map(int, sys.argv[2:5])
    mirror = Path(sys.argv[5]) if len(sys.argv) > 5 else None
    ledger = EmbeddedLedger.open(directory, mirror=mirror)
    results = ledger.create_accounts([Account(id=i, ledger=LEDGER, code=CODE) for i in range(1, accounts + 1)])
    assert all(r.status in (CreateAccountStatus.CREATED, CreateAccountStatus.EXISTS) for r in results)
    batch = first_batch
    while True:
        results_transfers = ledger.create_transfers(batch_transfers(batch, accounts, size))
        assert all(r.status == CreateTransferStatus.CREATED for r in results_transfers), batch
        sys.stdout.write(f"acked {batch}\n")
        sys.stdout.flush()
        batch += 1


if __name__ == "__main__":
    main()
