"""Stateful property test of the embedded engine (state machine + journal).

Random batches of transfers (linked chains, pending/post/void, balancing, limit-flagged accounts,
unknown accounts) against a durable EmbeddedLedger. After every step:
- per ledger, sum(debits_posted) == sum(credits_posted) and sum(debits_pending) == sum(credits_pending);
- no account with a limit flag is over its limit;
- every event got exactly one result, and timestamps strictly increase across batches.
Re-submitting the created events of any earlier batch changes nothing: each returns EXISTS (or
LINKED_EVENT_FAILED after the EXISTS that breaks its chain) and no balance moves. At teardown the
journal is replayed into a fresh ledger, which must equal the live one.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from facade.engine.embedded import EmbeddedLedger
from facade.engine.state_machine import PendingStatus
from facade.engine.types import (
    AMOUNT_MAX,
    Account,
    AccountFlags,
    CreateTransferStatus,
    Transfer,
    TransferFlags,
)

LEDGERS = (1, 2)
ACCOUNTS_PER_LEDGER = 5
ACCOUNT_FLAGS = (
    AccountFlags.NONE,
    AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
    AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
    AccountFlags.HISTORY,
)
UNKNOWN_ACCOUNT_ID = 10_000
BATCH_EVENTS_MAX_TEST = 8

S = CreateTransferStatus
amounts = st.sampled_from([0, 1, 7, 100, 10_000, AMOUNT_MAX])


def account_id(ledger: int, index: int) -> int:
    return ledger * 100 + index


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="stateful-"))
        self.ledger = EmbeddedLedger.open(self.directory)
        accounts = [
            Account(
                id=account_id(ledger, index),
                ledger=ledger,
                code=1,
                flags=ACCOUNT_FLAGS[index % len(ACCOUNT_FLAGS)],
            )
            for ledger in LEDGERS
            for index in range(ACCOUNTS_PER_LEDGER)
        ]
        results = self.ledger.create_accounts(accounts)
        assert all(r.status.name == "CREATED" for r in results)
        self.next_id = 1
        self.pending_ids: list[int] = []
        self.batches: list[tuple[list[Transfer], list[CreateTransferStatus]]] = []
        self.timestamp_last = 0

    def _balances(self) -> list[tuple[int, int, int, int, int]]:
        return [
            (a.id, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
            for a in self.ledger.state.accounts_ordered
        ]

    @rule(data=st.data(), size=st.integers(1, BATCH_EVENTS_MAX_TEST))
    def create_batch(self, data: st.DataObject, size: int) -> None:
        batch: list[Transfer] = []
        for _ in range(size):
            kind = data.draw(st.sampled_from(["single", "single", "pending", "post", "void", "bal_dr", "bal_cr"]))
            ledger = data.draw(st.sampled_from(LEDGERS))
            debit = account_id(ledger, data.draw(st.integers(0, ACCOUNTS_PER_LEDGER - 1)))
            credit = account_id(ledger, data.draw(st.integers(0, ACCOUNTS_PER_LEDGER - 1)))
            if data.draw(st.integers(0, 20)) == 0:
                credit = UNKNOWN_ACCOUNT_ID
            flags = TransferFlags.LINKED if data.draw(st.booleans()) and data.draw(st.booleans()) else 0
            transfer = Transfer(
                id=self.next_id, debit_account_id=debit, credit_account_id=credit,
                amount=data.draw(amounts), ledger=ledger, code=1,
            )  # fmt: skip
            self.next_id += 1
            if kind == "pending":
                flags |= TransferFlags.PENDING
            elif kind in ("post", "void"):
                flags |= TransferFlags.POST_PENDING_TRANSFER if kind == "post" else TransferFlags.VOID_PENDING_TRANSFER
                transfer.pending_id = data.draw(st.sampled_from(self.pending_ids)) if self.pending_ids else 1
                transfer.debit_account_id = transfer.credit_account_id = 0
                transfer.ledger = transfer.code = 0
            elif kind == "bal_dr":
                flags |= TransferFlags.BALANCING_DEBIT
            elif kind == "bal_cr":
                flags |= TransferFlags.BALANCING_CREDIT
            transfer.flags = flags
            batch.append(transfer)
        results = self.ledger.create_transfers(batch)
        assert len(results) == len(batch)
        statuses = [r.status for r in results]
        for transfer, status in zip(batch, statuses, strict=True):
            if status == S.CREATED and transfer.flags & TransferFlags.PENDING:
                self.pending_ids.append(transfer.id)
        timestamps = [r.timestamp for r in results]
        assert timestamps == sorted(timestamps) and len(set(timestamps)) == len(timestamps)
        assert timestamps[0] > self.timestamp_last
        self.timestamp_last = timestamps[-1]
        # A chain is all created or none created.
        chain: list[CreateTransferStatus] = []
        for transfer, status in zip(batch, statuses, strict=True):
            chain.append(status)
            if not transfer.flags & TransferFlags.LINKED:
                assert all(s == S.CREATED for s in chain) or not any(s == S.CREATED for s in chain)
                chain = []
        self.batches.append((batch, statuses))

    @precondition(lambda self: bool(self.batches))
    @rule(data=st.data())
    def resubmit_earlier_batch(self, data: st.DataObject) -> None:
        batch, statuses = data.draw(st.sampled_from(self.batches))
        created = [t for t, s in zip(batch, statuses, strict=True) if s == S.CREATED]
        if not created:
            return
        before = self._balances()
        size_before = self.ledger.journal_size
        results = self.ledger.create_transfers(created)
        chain_broken = False
        for transfer, result in zip(created, results, strict=True):
            if chain_broken:
                assert result.status == S.LINKED_EVENT_FAILED, result
            else:
                assert result.status == S.EXISTS, result
                assert result.timestamp == self.ledger.lookup_transfers([transfer.id])[0].timestamp
                chain_broken = bool(transfer.flags & TransferFlags.LINKED)
            if not transfer.flags & TransferFlags.LINKED:
                chain_broken = False
        assert self._balances() == before
        assert self.ledger.journal_size == size_before, "a no-op retry must not be journaled"

    @invariant()
    def double_entry_and_limits_hold(self) -> None:
        self.ledger.state.check_invariants()

    @invariant()
    def balances_equal_the_sum_of_stored_transfers(self) -> None:
        """An independent model: recompute every balance from the transfers themselves."""
        state = self.ledger.state
        expected = {a.id: [0, 0, 0, 0] for a in state.accounts_ordered}
        for t in state.transfers_ordered:
            if t.flags & TransferFlags.PENDING:
                if state.pending_status[t.id] == PendingStatus.PENDING:
                    expected[t.debit_account_id][0] += t.amount
                    expected[t.credit_account_id][2] += t.amount
            elif not t.flags & TransferFlags.VOID_PENDING_TRANSFER:
                expected[t.debit_account_id][1] += t.amount
                expected[t.credit_account_id][3] += t.amount
        for a in state.accounts_ordered:
            balances = [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted]
            assert balances == expected[a.id], a

    def teardown(self) -> None:
        live = self._balances()
        live_transfers = [(t.id, t.amount, t.timestamp) for t in self.ledger.state.transfers_ordered]
        self.ledger.close()
        replayed = EmbeddedLedger.open(self.directory)
        try:
            assert self._replayed_balances(replayed) == live
            assert [(t.id, t.amount, t.timestamp) for t in replayed.state.transfers_ordered] == live_transfers
        finally:
            replayed.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    @staticmethod
    def _replayed_balances(ledger: EmbeddedLedger) -> list[tuple[int, int, int, int, int]]:
        return [
            (a.id, a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
            for a in ledger.state.accounts_ordered
        ]


LedgerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerStateful = LedgerMachine.TestCase
