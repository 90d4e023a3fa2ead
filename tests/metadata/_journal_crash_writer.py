"""Subprocess for the journal store's crash test: posts transactions through the group committer and
the journal-backed metadata store (CREATE_TRANSACTIONS records) until SIGKILLed.

Before each round it prints "attempt FIRST LAST" (the keys it may have sent to the engine), then, for
each transaction once its outcome is durable and answered, "acked KEY committed TIMESTAMP" or
"acked KEY failed JSON". Usage: python _journal_crash_writer.py DATA_DIR FIRST_KEY
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from facade.api.gen.ledger.v1 import ledger_pb2 as pb
from facade.batcher import Committed, GroupCommitter
from facade.domain.accounts import ACCOUNT_CODE_SETTLEMENT, Currencies
from facade.domain.ids import settlement_account_id
from facade.domain.transactions import MappedTransaction, Metadata, PostRequest, map_post
from facade.engine.embedded import EmbeddedEngine
from facade.engine.types import Account, AccountFlags, CreateAccountStatus
from facade.metadata import JournalMetadataStore
from facade.settings import ApiSettings

ALICE = 1001
BOB = 1002
ROUND_TRANSACTIONS = 40
OVERDRAFT_EVERY = 5
"""Every fifth key debits ALICE (who may not go below zero) far beyond her balance: a recorded failure."""
CURRENCIES = Currencies(dict(ApiSettings().currencies))


def transaction(key: int) -> MappedTransaction:
    """Deterministic from the key, so the parent can rebuild the same request for its retry."""
    if key % OVERDRAFT_EVERY == OVERDRAFT_EVERY - 1:
        legs = [pb.Leg(type=pb.LEG_TYPE_DEBIT, account_id=str(ALICE), amount=str(10**15), currency="USD")]
    else:
        legs = [
            pb.Leg(type=pb.LEG_TYPE_CREDIT, account_id=str(ALICE), amount="5", currency="USD"),
            pb.Leg(type=pb.LEG_TYPE_DEBIT, account_id=str(BOB), amount="5", currency="USD"),
        ]
    return map_post(
        "client-a", PostRequest(f"key-{key}", legs, Metadata(description=f"crash {key}")), currencies=CURRENCIES
    )


async def open_ledger(directory: Path) -> tuple[EmbeddedEngine, JournalMetadataStore]:
    engine = await EmbeddedEngine.open(directory / "engine")
    ledger_id = CURRENCIES.get("USD").ledger
    results = await engine.create_accounts(
        [
            Account(id=ALICE, ledger=ledger_id, code=1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
            Account(id=BOB, ledger=ledger_id, code=1),
            Account(id=settlement_account_id("USD"), ledger=ledger_id, code=ACCOUNT_CODE_SETTLEMENT),
        ]
    )
    assert all(r.status in (CreateAccountStatus.CREATED, CreateAccountStatus.EXISTS) for r in results)
    store = await JournalMetadataStore.open(directory / "metadata.sqlite3", engine, owns_engine=True)
    return engine, store


async def main() -> None:
    directory, key = Path(sys.argv[1]), int(sys.argv[2])
    _, store = await open_ledger(directory)
    committer = GroupCommitter(store.engine, store, batch_transfers_max=25)
    committer.start()
    while True:
        keys = range(key, key + ROUND_TRANSACTIONS)
        sys.stdout.write(f"attempt {keys[0]} {keys[-1]}\n")
        sys.stdout.flush()
        futures = committer.submit([transaction(k) for k in keys])
        for k, future in zip(keys, futures, strict=True):
            outcome = await future
            if isinstance(outcome, Committed):
                sys.stdout.write(f"acked {k} committed {outcome.timestamp}\n")
            else:
                sys.stdout.write(f"acked {k} failed {outcome.to_json()}\n")
            sys.stdout.flush()
        key += ROUND_TRANSACTIONS


if __name__ == "__main__":
    asyncio.run(main())
