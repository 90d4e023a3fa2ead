"""A deterministic workload that leaves every kind of journal record on disk, and the acknowledged state
to compare a recovered ledger with (the storage-fault tests' ground truth)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from facade.engine.embedded import EmbeddedLedger
from facade.engine.intents import OutcomeKind, TransactionIntent
from facade.engine.journal import Operation
from facade.engine.journal_check import check
from facade.engine.types import (
    BATCH_EVENTS_MAX,
    Account,
    CreateAccountStatus,
    CreateTransferStatus,
    Transfer,
    TransferFlags,
)

LEDGER = 1
CODE = 1
ACCOUNTS_PER_BATCH = 10
PENDING_TIMEOUT_SECONDS = 1
NANOSECONDS_PER_SECOND = 1_000_000_000

_T = TypeVar("_T")


class Clock:
    """The engine's wall clock, moved by the workload so pending transfers expire on cue."""

    def __init__(self) -> None:
        self.now_ns = 1_750_000_000 * NANOSECONDS_PER_SECOND

    def __call__(self) -> int:
        self.now_ns += 1_000
        return self.now_ns


@dataclass(slots=True)
class Acknowledged:
    """Everything the ledger acknowledged, as returned by its reads right after the last write."""

    accounts: list[Account] = field(default_factory=list)
    transfers: list[Transfer] = field(default_factory=list)
    kinds: set[Operation] = field(default_factory=set)
    transactions: dict[int, TransactionRow] = field(default_factory=dict)
    """The journaled transaction metadata (intents, outcomes, bodies), as the ledger's index served it."""

    def assert_present_in(self, ledger: EmbeddedLedger) -> None:
        accounts = _lookup(ledger.lookup_accounts, [a.id for a in self.accounts])
        assert accounts == self.accounts, "acknowledged accounts or balances differ"
        transfers = _lookup(ledger.lookup_transfers, [t.id for t in self.transfers])
        assert transfers == self.transfers, "acknowledged transfers differ"
        assert len(ledger.state.transfers_ordered) == len(self.transfers), "unacknowledged transfers present"
        assert transactions_of(ledger) == self.transactions, "acknowledged transaction metadata differs"


TransactionRow = tuple[bytes, OutcomeKind, object, str, str, str]
"""(fingerprint, outcome, failure, client, key, body) of one journaled transaction."""


def transactions_of(ledger: EmbeddedLedger) -> dict[int, TransactionRow]:
    rows: dict[int, TransactionRow] = {}
    entries = ledger.index.transactions
    intents = ledger.read_intents([entry.location for entry in entries.values()])
    for transaction_id, entry in entries.items():
        intent = intents[entry.location]
        assert intent.transaction_id == transaction_id
        rows[transaction_id] = (
            entry.fingerprint,
            entry.kind,
            entry.failure,
            intent.client_id,
            intent.idempotency_key,
            intent.text,
        )
    return rows


def _intents(batch: list[Transfer], *, step: int) -> list[TransactionIntent]:
    """The batch as transactions of two legs (the last one alone), with a body of their own."""
    intents: list[TransactionIntent] = []
    for start in range(0, len(batch), 2):
        legs = batch[start : start + 2]
        transaction_id = legs[0].id << 16
        intents.append(
            TransactionIntent(
                transaction_id, transaction_id.to_bytes(16, "little"), f"client-{step % 3}", f"key-{legs[0].id}",
                f'{{"step":{step},"legs":{len(legs)},"note":"é"}}', len(legs), start, tuple(t.id for t in legs),
            )
        )  # fmt: skip
    return intents


def _lookup(function: Callable[[list[int]], list[_T]], ids: list[int]) -> list[_T]:
    found: list[_T] = []
    for start in range(0, len(ids), BATCH_EVENTS_MAX):
        found += function(ids[start : start + BATCH_EVENTS_MAX])
    return found


def write_workload(
    directory: Path, *, records: int, transfers_per_batch: int, seed: int, mirror: Path | None = None
) -> Acknowledged:
    """Writes about `records` journal records: account batches, transfer batches (some pending with a
    timeout), appends of a pulse with a batch, and standalone pulses."""
    rng = random.Random(seed)
    clock = Clock()
    ledger = EmbeddedLedger.open(directory, clock, mirror=mirror)
    account_ids: list[int] = []
    transfer_ids: list[int] = []
    next_id = 1
    try:
        while ledger.journal_op_last < records:
            step = len(transfer_ids) // transfers_per_batch
            if not account_ids or step % 11 == 5:
                accounts = [Account(id=next_id + i, ledger=LEDGER, code=CODE) for i in range(ACCOUNTS_PER_BATCH)]
                next_id += ACCOUNTS_PER_BATCH
                results = ledger.create_accounts(accounts)
                assert all(r.status == CreateAccountStatus.CREATED for r in results)
                account_ids += [a.id for a in accounts]
            if step % 7 == 3:
                clock.now_ns += 2 * PENDING_TIMEOUT_SECONDS * NANOSECONDS_PER_SECOND  # Pendings expire.
                if step % 2:
                    ledger.pulse()  # A standalone pulse record; otherwise the next append carries one.
            batch = []
            for _ in range(transfers_per_batch):
                debit, credit = rng.sample(account_ids, 2)
                pending = rng.random() < 0.1
                batch.append(
                    Transfer(
                        id=next_id,
                        debit_account_id=debit,
                        credit_account_id=credit,
                        amount=rng.randint(1, 10**6),
                        ledger=LEDGER,
                        code=CODE,
                        flags=TransferFlags.PENDING if pending else TransferFlags.NONE,
                        timeout=PENDING_TIMEOUT_SECONDS if pending else 0,
                    )
                )
                next_id += 1
            intents: list[TransactionIntent] = []
            if step % 3 == 1 or step % 4 == 2:
                # A CREATE_TRANSACTIONS record (transfers and metadata), one transaction of it refused.
                batch[-1] = Transfer(
                    id=batch[-1].id, debit_account_id=10**12, credit_account_id=batch[-1].credit_account_id,
                    amount=1, ledger=LEDGER, code=CODE,
                )  # fmt: skip
                intents = _intents(batch, step=step)
            if step % 4 == 2:  # A METADATA record first: the intents alone, their outcomes come with the batch.
                ledger.record_metadata(intents)
            results_transfers = ledger.create_transfers(batch, intents)
            refused = len(batch) - 1 if intents else len(batch)
            assert all(r.status == CreateTransferStatus.CREATED for r in results_transfers[:refused])
            assert all(r.status != CreateTransferStatus.CREATED for r in results_transfers[refused:])
            transfer_ids += [t.id for t in batch]
        acknowledged = Acknowledged(
            _lookup(ledger.lookup_accounts, account_ids), _lookup(ledger.lookup_transfers, transfer_ids)
        )
        acknowledged.transactions = transactions_of(ledger)
        assert {row[1] for row in acknowledged.transactions.values()} <= {OutcomeKind.COMMITTED, OutcomeKind.FAILED}
    finally:
        ledger.close()
    acknowledged.kinds = {record.operation for record in check(directory).records}
    return acknowledged
