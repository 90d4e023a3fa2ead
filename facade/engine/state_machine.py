"""TigerBeetle's state machine, in Python: the one place where money moves.

Deterministic and free of I/O: every operation takes its timestamp as an argument, so replaying the
journal (the same operations with the same timestamps) rebuilds exactly the same state and results.
The embedded engine owns durability; this module owns semantics.

Semantics follow TigerBeetle 0.17 rule for rule (docs/reference/requests/create_*.md, state_machine.zig):
- Checks run in result-code precedence order, which is the declaration order of CreateAccountStatus /
  CreateTransferStatus in `types.py`; the first failing check is the result.
- Events of one batch take consecutive slot timestamps ending at the batch's prepare timestamp. A
  created object keeps its slot timestamp (or its user timestamp when imported); `exists` reports the
  original object's timestamp; any other status reports the slot timestamp.
- Linked chains are atomic: the first non-created result (even `exists`) breaks the chain, rolls back
  its earlier events (LIFO) and fails every other event of the chain with LINKED_EVENT_FAILED; a
  rolled-back event keeps the timestamp it was created with. A linked last event reports
  LINKED_EVENT_CHAIN_OPEN, even when its chain broke earlier.
- Transient failures burn the transfer id (ID_ALREADY_FAILED later), even inside a rolled-back chain.
- Pending transfers resolve once: posted, voided, or expired by `pulse` (TigerBeetle's own expiry op).
  A post/void at or after `expires_at` fails with PENDING_TRANSFER_EXPIRED even before the pulse that
  releases the reserved amounts has run, exactly as in TigerBeetle. "The pending amount" is 0 for a
  void and AMOUNT_MAX for a post; any other amount is compared with the pending one. A closed account
  takes only voids, so a closing pending transfer can be voided or expire, never posted.
- A resubmitted post/void is compared with the stored one: fields it leaves to inherit are compared
  with what inheriting gives (state_machine.zig post_or_void_pending_transfer_exists), not skipped.
- Queries: a non-zero timestamp bound outside TimestampRange [1, 2^63 - 1] makes the filter invalid
  (no rows); a `limit` above QUERY_LIMIT_MAX raises TooMuchDataError, as the official client does.

Invariants, asserted after every write batch by `check_invariants` in tests and debug runs:
per ledger, sum(debits_posted) == sum(credits_posted) and sum(debits_pending) == sum(credits_pending);
no account with a limit flag is over its limit; timestamps strictly increase in `transfers_ordered`.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar, assert_never

from facade.engine.types import (
    AMOUNT_MAX,
    BATCH_EVENTS_MAX,
    NS_PER_SECOND,
    QUERY_LIMIT_MAX,
    TRANSFER_STATUSES_TRANSIENT,
    U128_MAX,
    Account,
    AccountBalance,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    ChangeEvent,
    ChangeEventsFilter,
    ChangeEventType,
    CreateAccountResult,
    CreateAccountStatus,
    CreateTransferResult,
    CreateTransferStatus,
    QueryFilter,
    QueryFilterFlags,
    TooMuchDataError,
    Transfer,
    TransferFlags,
)

# Imported timestamps must lie in TigerBeetle's TimestampRange: the top bit is reserved.
TIMESTAMP_MIN = 1
TIMESTAMP_MAX = (1 << 63) - 1

S = CreateTransferStatus
SA = CreateAccountStatus

# Flag bits as plain ints: testing an int against an IntFlag member allocates a new enum object per
# test, which the per-transfer hot path cannot afford.
_A_LINKED = int(AccountFlags.LINKED)
_A_DEBITS_MUST_NOT_EXCEED_CREDITS = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_A_CREDITS_MUST_NOT_EXCEED_DEBITS = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
_A_HISTORY = int(AccountFlags.HISTORY)
_A_IMPORTED = int(AccountFlags.IMPORTED)
_A_CLOSED = int(AccountFlags.CLOSED)
_A_LIMITS = _A_DEBITS_MUST_NOT_EXCEED_CREDITS | _A_CREDITS_MUST_NOT_EXCEED_DEBITS
_T_LINKED = int(TransferFlags.LINKED)
_T_PENDING = int(TransferFlags.PENDING)
_T_POST = int(TransferFlags.POST_PENDING_TRANSFER)
_T_VOID = int(TransferFlags.VOID_PENDING_TRANSFER)
_T_BALANCING_DEBIT = int(TransferFlags.BALANCING_DEBIT)
_T_BALANCING_CREDIT = int(TransferFlags.BALANCING_CREDIT)
_T_CLOSING_DEBIT = int(TransferFlags.CLOSING_DEBIT)
_T_CLOSING_CREDIT = int(TransferFlags.CLOSING_CREDIT)
_T_IMPORTED = int(TransferFlags.IMPORTED)
_AF_DEBITS = int(AccountFilterFlags.DEBITS)
_AF_CREDITS = int(AccountFilterFlags.CREDITS)
_AF_REVERSED = int(AccountFilterFlags.REVERSED)
_QF_REVERSED = int(QueryFilterFlags.REVERSED)

_ACCOUNT_FLAGS_PADDING = ~0b11_1111 & 0xFFFF
_TRANSFER_FLAGS_PADDING = ~0b1_1111_1111 & 0xFFFF
_ACCOUNT_FILTER_FLAGS_PADDING = ~0b111 & 0xFFFFFFFF
_QUERY_FILTER_FLAGS_PADDING = ~0b1 & 0xFFFFFFFF

_TRANSIENT = TRANSFER_STATUSES_TRANSIENT
_Event = TypeVar("_Event", Account, Transfer)


@dataclass(frozen=True, slots=True)
class _BatchKind:
    """What differs between the accounts' and the transfers' batch loop (StateMachine._execute): the
    linked flag and the statuses the loop itself assigns. One constant per kind, built at import, so a
    batch costs no construction."""

    linked_flag: int
    created: IntEnum
    linked_event_failed: IntEnum
    linked_event_chain_open: IntEnum


_ACCOUNT_BATCH = _BatchKind(_A_LINKED, SA.CREATED, SA.LINKED_EVENT_FAILED, SA.LINKED_EVENT_CHAIN_OPEN)
_TRANSFER_BATCH = _BatchKind(_T_LINKED, S.CREATED, S.LINKED_EVENT_FAILED, S.LINKED_EVENT_CHAIN_OPEN)


class PendingStatus(IntEnum):
    PENDING = 1
    POSTED = 2
    VOIDED = 3
    EXPIRED = 4


@dataclass(slots=True)
class _Change:
    """One committed change, with the balances and flags of its debit (`dr_`) and credit (`cr_`) account
    right after it. Flat, not a tuple per account: two objects fewer per change (one per transfer) for
    the cyclic collector to traverse, ~100 B less each."""

    timestamp: int
    type: ChangeEventType
    transfer: Transfer
    dr_debits_pending: int
    dr_debits_posted: int
    dr_credits_pending: int
    dr_credits_posted: int
    dr_flags: int
    cr_debits_pending: int
    cr_debits_posted: int
    cr_credits_pending: int
    cr_credits_posted: int
    cr_flags: int


def _change(timestamp: int, change_type: ChangeEventType, transfer: Transfer, dr: Account, cr: Account) -> _Change:
    """The change of `transfer` with the accounts' balances and flags as they are now."""
    return _Change(
        timestamp,
        change_type,
        transfer,
        dr.debits_pending,
        dr.debits_posted,
        dr.credits_pending,
        dr.credits_posted,
        dr.flags,
        cr.debits_pending,
        cr.debits_posted,
        cr.credits_pending,
        cr.credits_posted,
        cr.flags,
    )


def _snapshot(account: Account) -> tuple[int, int, int, int, int]:
    return (
        account.debits_pending,
        account.debits_posted,
        account.credits_pending,
        account.credits_posted,
        account.flags,
    )


def copy_account(a: Account) -> Account:
    return Account(
        a.id,
        a.debits_pending,
        a.debits_posted,
        a.credits_pending,
        a.credits_posted,
        a.user_data_128,
        a.user_data_64,
        a.user_data_32,
        a.ledger,
        a.code,
        a.flags,
        a.timestamp,
        a.reserved,
    )


def copy_transfer(t: Transfer) -> Transfer:
    return Transfer(
        t.id,
        t.debit_account_id,
        t.credit_account_id,
        t.amount,
        t.pending_id,
        t.user_data_128,
        t.user_data_64,
        t.user_data_32,
        t.timeout,
        t.ledger,
        t.code,
        t.flags,
        t.timestamp,
    )


# Undo records for linked-chain rollback, kept newest last and undone LIFO.


# Not frozen: a frozen dataclass's __init__ costs several times more, paid per event inside a chain.
@dataclass(slots=True)
class _UndoAccountCreated:
    account: Account
    timestamp_account_last_previous: int


@dataclass(slots=True)
class _UndoTransferCreated:
    transfer: Transfer
    timestamp_transfer_last_previous: int


@dataclass(slots=True)
class _UndoBalances:
    """An account's (debits_pending, debits_posted, credits_pending, credits_posted, flags) before a change."""

    account: Account
    snapshot: tuple[int, int, int, int, int]


@dataclass(slots=True)
class _UndoPendingStatus:
    pending_id: int
    status: PendingStatus


_Undo = _UndoAccountCreated | _UndoTransferCreated | _UndoBalances | _UndoPendingStatus


def _assert_within_limits(account: Account) -> None:
    """An account's balances fit in u128 and respect its limit flag (pending credits never count)."""
    assert account.debits_pending + account.debits_posted <= U128_MAX
    assert account.credits_pending + account.credits_posted <= U128_MAX
    if account.flags & _A_DEBITS_MUST_NOT_EXCEED_CREDITS:
        assert account.debits_pending + account.debits_posted <= account.credits_posted, account
    if account.flags & _A_CREDITS_MUST_NOT_EXCEED_DEBITS:
        assert account.credits_pending + account.credits_posted <= account.debits_posted, account


class StateMachine:
    """All ledger state, in memory, changed only through the operations below."""

    def __init__(self) -> None:
        self.accounts: dict[int, Account] = {}
        self.accounts_ordered: list[Account] = []  # By timestamp (creation order).
        self.transfers: dict[int, Transfer] = {}
        self.transfers_ordered: list[Transfer] = []  # By timestamp (commit order).
        self.transfers_by_account: dict[int, list[Transfer]] = {}
        # Balances after each transfer, for accounts with flags.history, aligned by timestamp: the
        # transfer's change, which holds both accounts' balances right after it (the AccountBalance is
        # made when one is read: an object per account per transfer cost ~0.35 µs each to make, and as
        # much again for the cyclic collector to traverse, on the write path).
        self.history: dict[int, list[_Change]] = {}
        self.pending_status: dict[int, PendingStatus] = {}
        # (expires_at, pending transfer id, its timestamp). Entries whose transfer was resolved, or
        # rolled back (an id may be reused after a rollback), are stale and skipped on pop.
        self.expiries: list[tuple[int, int, int]] = []
        self.transfer_ids_failed: set[int] = set()
        self.changes: list[_Change] = []
        self.prepare_timestamp = 0  # The last slot timestamp handed out.
        self.timestamp_transfer_last = 0  # The last transfer's timestamp (imported ones included).
        self.timestamp_account_last = 0
        # Set by any operation that changed state: the engine journals only batches that did.
        self.dirty = False
        self._undo: list[_Undo] | None = None

    # ------------------------------------------------------------------------------------------
    # Timestamps.

    def prepare(self, count: int, realtime_ns: int) -> int:
        """The prepare timestamp for a batch of `count` events: the wall clock, unless that would not
        leave `count` fresh slots above every timestamp already handed out."""
        assert count >= 0
        timestamp = max(realtime_ns, self.prepare_timestamp + count)
        assert timestamp <= TIMESTAMP_MAX
        return timestamp

    def _slots(self, count: int, timestamp: int) -> int:
        """Takes slots timestamp-count+1 .. timestamp; returns the first."""
        assert count > 0
        first = timestamp - count + 1
        assert first > self.prepare_timestamp, "timestamps must strictly increase"
        self.prepare_timestamp = timestamp
        return first

    # ------------------------------------------------------------------------------------------
    # create_accounts.

    def create_accounts(self, events: Sequence[Account], timestamp: int) -> list[CreateAccountResult]:
        count = len(events)
        if count == 0:
            return []
        first = self._slots(count, timestamp)
        imported_batch = bool(int(events[0].flags) & _A_IMPORTED)
        accounts = self.accounts

        def create(a: Account, slot: int) -> tuple[IntEnum, int]:
            status = self._create_account(a, slot, imported_batch)
            if status == SA.CREATED or status == SA.EXISTS:
                return status, accounts[a.id].timestamp
            return status, slot

        statuses, timestamps = self._execute(events, first, create, _ACCOUNT_BATCH)
        return [
            CreateAccountResult(timestamp, SA(status)) for timestamp, status in zip(timestamps, statuses, strict=True)
        ]

    def _create_account(self, a: Account, timestamp: int, imported_batch: bool) -> CreateAccountStatus:
        flags = int(a.flags)
        imported = bool(flags & _A_IMPORTED)
        if imported_batch and not imported:
            return SA.IMPORTED_EVENT_EXPECTED
        if not imported_batch and imported:
            return SA.IMPORTED_EVENT_NOT_EXPECTED
        if imported:
            if not TIMESTAMP_MIN <= a.timestamp <= TIMESTAMP_MAX:
                return SA.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE
            if a.timestamp >= timestamp:
                return SA.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE
        elif a.timestamp != 0:
            return SA.TIMESTAMP_MUST_BE_ZERO
        if a.reserved != 0:
            return SA.RESERVED_FIELD
        if flags & _ACCOUNT_FLAGS_PADDING:
            return SA.RESERVED_FLAG
        if a.id == 0:
            return SA.ID_MUST_NOT_BE_ZERO
        if a.id == U128_MAX:
            return SA.ID_MUST_NOT_BE_INT_MAX
        e = self.accounts.get(a.id)
        if e is not None:
            if flags != e.flags:
                return SA.EXISTS_WITH_DIFFERENT_FLAGS
            if a.user_data_128 != e.user_data_128:
                return SA.EXISTS_WITH_DIFFERENT_USER_DATA_128
            if a.user_data_64 != e.user_data_64:
                return SA.EXISTS_WITH_DIFFERENT_USER_DATA_64
            if a.user_data_32 != e.user_data_32:
                return SA.EXISTS_WITH_DIFFERENT_USER_DATA_32
            if a.ledger != e.ledger:
                return SA.EXISTS_WITH_DIFFERENT_LEDGER
            if a.code != e.code:
                return SA.EXISTS_WITH_DIFFERENT_CODE
            return SA.EXISTS
        if flags & _A_DEBITS_MUST_NOT_EXCEED_CREDITS and flags & _A_CREDITS_MUST_NOT_EXCEED_DEBITS:
            return SA.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if a.debits_pending != 0:
            return SA.DEBITS_PENDING_MUST_BE_ZERO
        if a.debits_posted != 0:
            return SA.DEBITS_POSTED_MUST_BE_ZERO
        if a.credits_pending != 0:
            return SA.CREDITS_PENDING_MUST_BE_ZERO
        if a.credits_posted != 0:
            return SA.CREDITS_POSTED_MUST_BE_ZERO
        if a.ledger == 0:
            return SA.LEDGER_MUST_NOT_BE_ZERO
        if a.code == 0:
            return SA.CODE_MUST_NOT_BE_ZERO
        # Object timestamps increase per kind and are unique across accounts and transfers.
        if imported and (
            a.timestamp <= self.timestamp_account_last or _timestamp_taken(self.transfers_ordered, a.timestamp)
        ):
            return SA.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS

        stored = copy_account(a)
        stored.flags = int(flags)
        stored.timestamp = a.timestamp if imported else timestamp
        self.accounts[stored.id] = stored
        self.accounts_ordered.append(stored)
        timestamp_account_last_previous = self.timestamp_account_last
        self.timestamp_account_last = stored.timestamp
        if flags & _A_HISTORY:
            self.history[stored.id] = []
        self.dirty = True
        if self._undo is not None:
            self._undo.append(_UndoAccountCreated(stored, timestamp_account_last_previous))
        return SA.CREATED

    # ------------------------------------------------------------------------------------------
    # create_transfers.

    def create_transfers(self, events: Sequence[Transfer], timestamp: int) -> list[CreateTransferResult]:
        count = len(events)
        if count == 0:
            return []
        first = self._slots(count, timestamp)
        imported_batch = bool(int(events[0].flags) & _T_IMPORTED)
        transfers = self.transfers
        failed = self.transfer_ids_failed
        created = S.CREATED

        def create(t: Transfer, slot: int) -> tuple[IntEnum, int]:
            status = self._create_transfer(t, slot, imported_batch)
            if status is created or status == S.EXISTS:
                return status, transfers[t.id].timestamp
            if status in _TRANSIENT:
                # Burned even if its chain is rolled back: a retry must not succeed later.
                failed.add(t.id)
                self.dirty = True
            return status, slot

        statuses, timestamps = self._execute(events, first, create, _TRANSFER_BATCH)
        return [
            CreateTransferResult(timestamp, status)  # type: ignore[arg-type]
            for timestamp, status in zip(timestamps, statuses, strict=True)
        ]

    def _execute(
        self,
        events: Sequence[_Event],
        first: int,
        create: Callable[[_Event, int], tuple[IntEnum, int]],
        kind: _BatchKind,
    ) -> tuple[list[IntEnum], list[int]]:
        """TigerBeetle's batch loop: events in order, linked chains atomic. Returns each event's
        status and result timestamp."""
        # Locals, read once per batch: the loop below runs once per event.
        linked_flag, created = kind.linked_flag, kind.created
        linked_event_failed, linked_event_chain_open = kind.linked_event_failed, kind.linked_event_chain_open
        count = len(events)
        assert 0 < count <= BATCH_EVENTS_MAX
        assert self._undo is None
        statuses: list[IntEnum] = [created] * count
        timestamps: list[int] = [0] * count
        chain_start: int | None = None
        chain_broken = False
        for index in range(count):
            event = events[index]
            slot = first + index
            linked = bool(int(event.flags) & linked_flag)
            if linked and chain_start is None:
                chain_start = index
                assert not chain_broken
                self._undo = []
            # The open chain is checked before the broken one (state_machine.zig execute_create): a
            # linked last event reports LINKED_EVENT_CHAIN_OPEN even when its chain broke earlier.
            if linked and index == count - 1:
                status, timestamp = linked_event_chain_open, slot
            elif chain_broken:
                status, timestamp = linked_event_failed, slot
            else:
                status, timestamp = create(event, slot)
            if status is not created and chain_start is not None and not chain_broken:
                chain_broken = True
                self._rollback()
                # Only the status changes: a rolled-back event keeps the timestamp it was created
                # with (its imported timestamp, if imported), as TigerBeetle rewrites only
                # `results[chain_index].status`.
                for chain_index in range(chain_start, index):
                    assert statuses[chain_index] is created
                    statuses[chain_index] = linked_event_failed
            statuses[index] = status
            timestamps[index] = timestamp
            if chain_start is not None and (not linked or index == count - 1):
                chain_start = None
                chain_broken = False
                self._undo = None
        assert chain_start is None and not chain_broken
        assert self._undo is None
        assert all(timestamp != 0 for timestamp in timestamps)
        return statuses, timestamps

    def _create_transfer(self, t: Transfer, timestamp: int, imported_batch: bool) -> CreateTransferStatus:
        # The caller hands out strictly increasing slots above every stored transfer (imported
        # timestamps lie below the slot they are checked against).
        assert timestamp > self.timestamp_transfer_last
        assert timestamp <= self.prepare_timestamp
        flags = int(t.flags)
        imported = bool(flags & _T_IMPORTED)
        if imported_batch and not imported:
            return S.IMPORTED_EVENT_EXPECTED
        if not imported_batch and imported:
            return S.IMPORTED_EVENT_NOT_EXPECTED
        if imported:
            if not TIMESTAMP_MIN <= t.timestamp <= TIMESTAMP_MAX:
                return S.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE
            # TigerBeetle compares with the batch's timestamp and then asserts the imported timestamp
            # is at most the event's slot; the slot is the stricter bound and never trips the assert.
            if t.timestamp >= timestamp:
                return S.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE
        elif t.timestamp != 0:
            return S.TIMESTAMP_MUST_BE_ZERO
        if flags & _TRANSFER_FLAGS_PADDING:
            return S.RESERVED_FLAG
        transfer_id = t.id
        if transfer_id == 0:
            return S.ID_MUST_NOT_BE_ZERO
        if transfer_id == U128_MAX:
            return S.ID_MUST_NOT_BE_INT_MAX
        e = self.transfers.get(transfer_id)
        if e is not None:
            return self._create_transfer_exists(t, e)
        if transfer_id in self.transfer_ids_failed:
            return S.ID_ALREADY_FAILED

        if flags & (_T_POST | _T_VOID):
            return self._post_or_void_pending_transfer(t, timestamp, imported)

        debit_account_id, credit_account_id = t.debit_account_id, t.credit_account_id
        if debit_account_id == 0:
            return S.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if debit_account_id == U128_MAX:
            return S.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
        if credit_account_id == 0:
            return S.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
        if credit_account_id == U128_MAX:
            return S.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
        if credit_account_id == debit_account_id:
            return S.ACCOUNTS_MUST_BE_DIFFERENT
        if t.pending_id != 0:
            return S.PENDING_ID_MUST_BE_ZERO
        pending = bool(flags & _T_PENDING)
        if not pending:
            if t.timeout != 0:
                return S.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
            if flags & (_T_CLOSING_DEBIT | _T_CLOSING_CREDIT):
                return S.CLOSING_TRANSFER_MUST_BE_PENDING
        if t.ledger == 0:
            return S.LEDGER_MUST_NOT_BE_ZERO
        if t.code == 0:
            return S.CODE_MUST_NOT_BE_ZERO
        accounts = self.accounts
        dr = accounts.get(debit_account_id)
        if dr is None:
            return S.DEBIT_ACCOUNT_NOT_FOUND
        cr = accounts.get(credit_account_id)
        if cr is None:
            return S.CREDIT_ACCOUNT_NOT_FOUND
        if dr.ledger != cr.ledger:
            return S.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
        if t.ledger != dr.ledger:
            return S.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
        if imported:
            imported_status = self._imported_transfer_checks(t, dr, cr)
            if imported_status is not None:
                return imported_status
        timestamp_actual = t.timestamp if imported else timestamp
        assert timestamp_actual > dr.timestamp and timestamp_actual > cr.timestamp
        if dr.flags & _A_CLOSED:
            return S.DEBIT_ACCOUNT_ALREADY_CLOSED
        if cr.flags & _A_CLOSED:
            return S.CREDIT_ACCOUNT_ALREADY_CLOSED

        amount = t.amount
        if flags & _T_BALANCING_DEBIT:
            dr_balance = dr.debits_posted + dr.debits_pending
            amount = min(amount, max(0, dr.credits_posted - dr_balance))
        if flags & _T_BALANCING_CREDIT:
            cr_balance = cr.credits_posted + cr.credits_pending
            amount = min(amount, max(0, cr.debits_posted - cr_balance))
        assert 0 <= amount <= t.amount

        if pending:
            if amount + dr.debits_pending > U128_MAX:
                return S.OVERFLOWS_DEBITS_PENDING
            if amount + cr.credits_pending > U128_MAX:
                return S.OVERFLOWS_CREDITS_PENDING
        if amount + dr.debits_posted > U128_MAX:
            return S.OVERFLOWS_DEBITS_POSTED
        if amount + cr.credits_posted > U128_MAX:
            return S.OVERFLOWS_CREDITS_POSTED
        if amount + dr.debits_pending + dr.debits_posted > U128_MAX:
            return S.OVERFLOWS_DEBITS
        if amount + cr.credits_pending + cr.credits_posted > U128_MAX:
            return S.OVERFLOWS_CREDITS
        # TigerBeetle sums in u63: the timestamp's top bit is its tombstone flag.
        if timestamp_actual + t.timeout * NS_PER_SECOND > TIMESTAMP_MAX:
            return S.OVERFLOWS_TIMEOUT
        if (
            dr.flags & _A_DEBITS_MUST_NOT_EXCEED_CREDITS
            and dr.debits_pending + dr.debits_posted + amount > dr.credits_posted
        ):
            return S.EXCEEDS_CREDITS
        if (
            cr.flags & _A_CREDITS_MUST_NOT_EXCEED_DEBITS
            and cr.credits_pending + cr.credits_posted + amount > cr.debits_posted
        ):
            return S.EXCEEDS_DEBITS

        # After this point, the transfer must succeed.
        stored = Transfer(
            transfer_id,
            debit_account_id,
            credit_account_id,
            amount,
            0,
            t.user_data_128,
            t.user_data_64,
            t.user_data_32,
            t.timeout,
            t.ledger,
            t.code,
            int(flags),
            timestamp_actual,
        )
        undo = self._undo
        if undo is not None:
            undo.append(_UndoBalances(dr, _snapshot(dr)))
            undo.append(_UndoBalances(cr, _snapshot(cr)))
        if pending:
            dr.debits_pending += amount
            cr.credits_pending += amount
            assert not dr.flags & _A_CLOSED and not cr.flags & _A_CLOSED
            if flags & _T_CLOSING_DEBIT:
                dr.flags |= _A_CLOSED
            if flags & _T_CLOSING_CREDIT:
                cr.flags |= _A_CLOSED
            self.pending_status[transfer_id] = PendingStatus.PENDING
            if t.timeout:
                assert not imported
                expires_at = stored.timestamp + t.timeout * NS_PER_SECOND
                heapq.heappush(self.expiries, (expires_at, transfer_id, stored.timestamp))
            change_type = ChangeEventType.TWO_PHASE_PENDING
        else:
            dr.debits_posted += amount
            cr.credits_posted += amount
            change_type = ChangeEventType.SINGLE_PHASE
        self._insert_transfer(stored, dr, cr, change_type)
        assert self.timestamp_transfer_last == timestamp_actual
        assert self.transfers[transfer_id] is stored
        if (dr.flags | cr.flags) & _A_LIMITS:
            _assert_within_limits(dr)
            _assert_within_limits(cr)
        return S.CREATED

    def _imported_transfer_regresses(self, t: Transfer) -> bool:
        return t.timestamp <= self.timestamp_transfer_last or _timestamp_taken(self.accounts_ordered, t.timestamp)

    def _imported_transfer_checks(self, t: Transfer, dr: Account, cr: Account) -> CreateTransferStatus | None:
        if self._imported_transfer_regresses(t):
            return S.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS
        if t.timestamp <= dr.timestamp:
            return S.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT
        if t.timestamp <= cr.timestamp:
            return S.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT
        if t.timeout != 0:
            return S.IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO
        return None

    def _create_transfer_exists(self, t: Transfer, e: Transfer) -> CreateTransferStatus:
        """Compares a retried transfer with the stored one; balances and timestamps are ignored."""
        assert t.id == e.id
        # The flags change the meaning of the other comparisons, so they come first.
        if t.flags != e.flags:
            return S.EXISTS_WITH_DIFFERENT_FLAGS
        if t.pending_id != e.pending_id:
            return S.EXISTS_WITH_DIFFERENT_PENDING_ID
        if t.timeout != e.timeout:
            return S.EXISTS_WITH_DIFFERENT_TIMEOUT
        if t.flags & (_T_POST | _T_VOID):
            # Same pending_id as a stored post/void: the pending transfer exists.
            return self._post_or_void_pending_transfer_exists(t, e, self.transfers[t.pending_id])
        if t.debit_account_id != e.debit_account_id:
            return S.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id != e.credit_account_id:
            return S.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.flags & (_T_BALANCING_DEBIT | _T_BALANCING_CREDIT):
            # The stored amount is what was actually moved, at most the requested one.
            if t.amount < e.amount:
                return S.EXISTS_WITH_DIFFERENT_AMOUNT
        elif t.amount != e.amount:
            return S.EXISTS_WITH_DIFFERENT_AMOUNT
        if t.user_data_128 != e.user_data_128:
            return S.EXISTS_WITH_DIFFERENT_USER_DATA_128
        if t.user_data_64 != e.user_data_64:
            return S.EXISTS_WITH_DIFFERENT_USER_DATA_64
        if t.user_data_32 != e.user_data_32:
            return S.EXISTS_WITH_DIFFERENT_USER_DATA_32
        if t.ledger != e.ledger:
            return S.EXISTS_WITH_DIFFERENT_LEDGER
        if t.code != e.code:
            return S.EXISTS_WITH_DIFFERENT_CODE
        return S.EXISTS

    @staticmethod
    def _post_or_void_pending_transfer_exists(t: Transfer, e: Transfer, p: Transfer) -> CreateTransferStatus:
        """A retried post/void, compared with the stored one (`e`) the way TigerBeetle does
        (state_machine.zig post_or_void_pending_transfer_exists): a field the retry leaves to inherit is
        compared with what inheriting gives, never treated as a wildcard. An amount of 0 (void) or
        AMOUNT_MAX (post) must match a stored amount equal to the pending one; a zero user_data must
        match a stored user_data equal to the pending one's. Accounts, ledger and code may stay 0."""
        assert t.id == e.id and t.id != p.id
        assert t.flags == e.flags and t.flags & (_T_POST | _T_VOID)
        assert t.pending_id == e.pending_id == p.id and p.flags & _T_PENDING
        assert t.timeout == e.timeout == 0
        assert (e.debit_account_id, e.credit_account_id, e.ledger, e.code) == (
            p.debit_account_id,
            p.credit_account_id,
            p.ledger,
            p.code,
        )
        assert e.timestamp > p.timestamp
        if t.debit_account_id != 0 and t.debit_account_id != e.debit_account_id:
            return S.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id != 0 and t.credit_account_id != e.credit_account_id:
            return S.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
        inherit_amount = AMOUNT_MAX if t.flags & _T_POST else 0
        assert e.amount <= p.amount
        if t.amount == inherit_amount:
            if e.amount != p.amount:
                return S.EXISTS_WITH_DIFFERENT_AMOUNT
        elif t.amount != e.amount:
            return S.EXISTS_WITH_DIFFERENT_AMOUNT
        if (t.user_data_128 or p.user_data_128) != e.user_data_128:
            return S.EXISTS_WITH_DIFFERENT_USER_DATA_128
        if (t.user_data_64 or p.user_data_64) != e.user_data_64:
            return S.EXISTS_WITH_DIFFERENT_USER_DATA_64
        if (t.user_data_32 or p.user_data_32) != e.user_data_32:
            return S.EXISTS_WITH_DIFFERENT_USER_DATA_32
        if t.ledger != 0 and t.ledger != e.ledger:
            return S.EXISTS_WITH_DIFFERENT_LEDGER
        if t.code != 0 and t.code != e.code:
            return S.EXISTS_WITH_DIFFERENT_CODE
        return S.EXISTS

    def _post_or_void_pending_transfer(self, t: Transfer, timestamp: int, imported: bool) -> CreateTransferStatus:
        # The caller checked these (state_machine.zig re-asserts them the same way).
        assert t.id not in self.transfers and t.id not in self.transfer_ids_failed
        assert t.id not in (0, U128_MAX)
        assert t.flags & (_T_POST | _T_VOID)
        assert not t.flags & _TRANSFER_FLAGS_PADDING
        assert timestamp > self.timestamp_transfer_last
        flags = int(t.flags)
        if flags & _T_POST and flags & _T_VOID:
            return S.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if flags & (_T_PENDING | _T_BALANCING_DEBIT | _T_BALANCING_CREDIT | _T_CLOSING_DEBIT | _T_CLOSING_CREDIT):
            return S.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        post = bool(flags & _T_POST)
        if t.pending_id == 0:
            return S.PENDING_ID_MUST_NOT_BE_ZERO
        if t.pending_id == U128_MAX:
            return S.PENDING_ID_MUST_NOT_BE_INT_MAX
        if t.pending_id == t.id:
            return S.PENDING_ID_MUST_BE_DIFFERENT
        if t.timeout != 0:
            return S.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        p = self.transfers.get(t.pending_id)
        if p is None:
            return S.PENDING_TRANSFER_NOT_FOUND
        assert p.timestamp < timestamp
        if not p.flags & _T_PENDING:
            return S.PENDING_TRANSFER_NOT_PENDING
        if t.debit_account_id != 0 and t.debit_account_id != p.debit_account_id:
            return S.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id != 0 and t.credit_account_id != p.credit_account_id:
            return S.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        # user_data may differ between the pending transfer and its post/void.
        if t.ledger != 0 and t.ledger != p.ledger:
            return S.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
        if t.code != 0 and t.code != p.code:
            return S.PENDING_TRANSFER_HAS_DIFFERENT_CODE
        # "Inherit the pending amount" is 0 for a void and AMOUNT_MAX for a post; any other amount is
        # taken as given, so a void above the pending amount exceeds it like a post does.
        if post:
            amount = p.amount if t.amount == AMOUNT_MAX else t.amount
        else:
            amount = p.amount if t.amount == 0 else t.amount
        if amount > p.amount:
            return S.EXCEEDS_PENDING_TRANSFER_AMOUNT
        if not post and amount < p.amount:
            return S.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        status = self.pending_status[p.id]
        if status == PendingStatus.POSTED:
            return S.PENDING_TRANSFER_ALREADY_POSTED
        if status == PendingStatus.VOIDED:
            return S.PENDING_TRANSFER_ALREADY_VOIDED
        if status == PendingStatus.EXPIRED:
            assert p.timeout > 0 and not p.flags & _T_IMPORTED
            return S.PENDING_TRANSFER_EXPIRED
        assert status == PendingStatus.PENDING
        if p.timeout and p.timestamp + p.timeout * NS_PER_SECOND <= timestamp:
            # Expired, though the pulse that releases it has not run yet.
            return S.PENDING_TRANSFER_EXPIRED
        if imported and self._imported_transfer_regresses(t):
            return S.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS
        timestamp_actual = t.timestamp if imported else timestamp
        dr = self.accounts[p.debit_account_id]
        cr = self.accounts[p.credit_account_id]
        assert timestamp_actual > dr.timestamp and timestamp_actual > cr.timestamp
        # The only movement allowed in a closed account is voiding a pending transfer. This includes
        # the closing transfer itself: it can be voided (reopening the account) or expire, never posted.
        if dr.flags & _A_CLOSED and post:
            return S.DEBIT_ACCOUNT_ALREADY_CLOSED
        if cr.flags & _A_CLOSED and post:
            return S.CREDIT_ACCOUNT_ALREADY_CLOSED

        # After this point, the transfer must succeed.
        assert amount <= p.amount <= dr.debits_pending and p.amount <= cr.credits_pending
        stored = Transfer(
            t.id,
            p.debit_account_id,
            p.credit_account_id,
            amount,
            t.pending_id,
            t.user_data_128 or p.user_data_128,
            t.user_data_64 or p.user_data_64,
            t.user_data_32 or p.user_data_32,
            0,
            p.ledger,
            p.code,
            flags,
            timestamp_actual,
        )
        undo = self._undo
        if undo is not None:
            undo.append(_UndoBalances(dr, _snapshot(dr)))
            undo.append(_UndoBalances(cr, _snapshot(cr)))
            undo.append(_UndoPendingStatus(p.id, status))
        dr.debits_pending -= p.amount
        cr.credits_pending -= p.amount
        if post:
            assert not p.flags & (_T_CLOSING_DEBIT | _T_CLOSING_CREDIT)
            # Cannot overflow: debits_pending + debits_posted fitted, and amount <= p.amount.
            dr.debits_posted += amount
            cr.credits_posted += amount
            self.pending_status[p.id] = PendingStatus.POSTED
            change_type = ChangeEventType.TWO_PHASE_POSTED
        else:
            assert amount == p.amount
            self._reopen_closed(p, dr, cr)
            self.pending_status[p.id] = PendingStatus.VOIDED
            change_type = ChangeEventType.TWO_PHASE_VOIDED
        self._insert_transfer(stored, dr, cr, change_type)
        assert self.timestamp_transfer_last == timestamp_actual
        assert self.pending_status[p.id] != PendingStatus.PENDING
        assert dr.debits_posted <= U128_MAX and cr.credits_posted <= U128_MAX
        return S.CREATED

    @staticmethod
    def _reopen_closed(p: Transfer, dr: Account, cr: Account) -> None:
        """Voiding (or expiring) a closing transfer reopens the account it closed."""
        if p.flags & _T_CLOSING_DEBIT:
            dr.flags &= ~_A_CLOSED
        if p.flags & _T_CLOSING_CREDIT:
            cr.flags &= ~_A_CLOSED

    def _insert_transfer(self, stored: Transfer, dr: Account, cr: Account, change_type: ChangeEventType) -> None:
        assert stored.timestamp > self.timestamp_transfer_last
        self.transfers[stored.id] = stored
        self.transfers_ordered.append(stored)
        by_account = self.transfers_by_account
        by_account.setdefault(dr.id, []).append(stored)
        by_account.setdefault(cr.id, []).append(stored)
        change = _change(stored.timestamp, change_type, stored, dr, cr)
        if dr.flags & _A_HISTORY:
            self.history[dr.id].append(change)
        if cr.flags & _A_HISTORY:
            self.history[cr.id].append(change)
        self.changes.append(change)
        if self._undo is not None:
            self._undo.append(_UndoTransferCreated(stored, self.timestamp_transfer_last))
        self.timestamp_transfer_last = stored.timestamp
        self.dirty = True

    def _rollback(self) -> None:
        """Undoes the current chain's events, newest first (LIFO), as if they had never run.
        The slot timestamps stay consumed so later events are still timestamped correctly."""
        undo = self._undo
        assert undo is not None
        while undo:
            record = undo.pop()
            match record:
                case _UndoTransferCreated(stored, timestamp_previous):
                    assert self.transfers_ordered[-1] is stored
                    assert timestamp_previous < stored.timestamp
                    del self.transfers[stored.id]
                    self.transfers_ordered.pop()
                    self.changes.pop()
                    for account_id in (stored.debit_account_id, stored.credit_account_id):
                        popped = self.transfers_by_account[account_id].pop()
                        assert popped is stored
                        history = self.history.get(account_id)
                        if history and history[-1].timestamp == stored.timestamp:
                            history.pop()
                    if stored.flags & _T_PENDING:
                        del self.pending_status[stored.id]
                        # Its expiry entry, if any, is now stale and skipped by pulse.
                    self.timestamp_transfer_last = timestamp_previous
                case _UndoBalances(account, snapshot):
                    (
                        account.debits_pending,
                        account.debits_posted,
                        account.credits_pending,
                        account.credits_posted,
                        account.flags,
                    ) = snapshot
                case _UndoPendingStatus(pending_id, status):
                    assert self.pending_status[pending_id] != PendingStatus.PENDING
                    self.pending_status[pending_id] = status
                case _UndoAccountCreated(account, timestamp_previous):
                    assert self.accounts_ordered[-1] is account
                    del self.accounts[account.id]
                    self.accounts_ordered.pop()
                    self.history.pop(account.id, None)
                    self.timestamp_account_last = timestamp_previous
                    assert self.timestamp_account_last == (
                        self.accounts_ordered[-1].timestamp if self.accounts_ordered else 0
                    )
                case _:
                    assert_never(record)

    # ------------------------------------------------------------------------------------------
    # Expiry: TigerBeetle's pulse operation.

    def expiries_due(self, realtime_ns: int) -> int:
        """How many pending transfers have expired by `realtime_ns` and await a pulse."""
        return sum(1 for entry in self.expiries if entry[0] <= realtime_ns and self._expiry_live(entry))

    def _expiry_live(self, entry: tuple[int, int, int]) -> bool:
        _, pending_id, timestamp = entry
        if self.pending_status.get(pending_id) != PendingStatus.PENDING:
            return False
        return self.transfers[pending_id].timestamp == timestamp

    def next_expiry(self) -> int | None:
        """The earliest `expires_at` among live pending transfers (stale heap entries dropped)."""
        while self.expiries:
            if self._expiry_live(self.expiries[0]):
                return self.expiries[0][0]
            heapq.heappop(self.expiries)
        return None

    def pulse(self, realtime_ns: int) -> int:
        """Expires every pending transfer whose timeout has passed by `realtime_ns`, releasing its
        reserved amounts (and reopening an account it closed). Each expiry takes the next slot
        timestamp. Returns how many expired."""
        expired = 0
        while self.expiries and self.expiries[0][0] <= realtime_ns:
            entry = heapq.heappop(self.expiries)
            if not self._expiry_live(entry):
                continue  # Posted, voided, or rolled back: a stale entry.
            pending_id = entry[1]
            p = self.transfers[pending_id]
            dr = self.accounts[p.debit_account_id]
            cr = self.accounts[p.credit_account_id]
            dr.debits_pending -= p.amount
            cr.credits_pending -= p.amount
            self._reopen_closed(p, dr, cr)
            self.pending_status[pending_id] = PendingStatus.EXPIRED
            self.prepare_timestamp += 1
            self.changes.append(_change(self.prepare_timestamp, ChangeEventType.TWO_PHASE_EXPIRED, p, dr, cr))
            expired += 1
        if expired:
            self.dirty = True
        return expired

    # ------------------------------------------------------------------------------------------
    # Reads. They return copies: callers can never change engine state.

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        accounts = self.accounts
        return [copy_account(accounts[i]) for i in ids if i in accounts]

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        transfers = self.transfers
        return [copy_transfer(transfers[i]) for i in ids if i in transfers]

    @staticmethod
    def _account_filter_valid(f: AccountFilter) -> bool:
        """TigerBeetle's get_scan_from_account_filter: an invalid filter matches nothing."""
        _check_limit(f.limit)
        return (
            f.account_id not in (0, U128_MAX)
            and _timestamp_bounds_valid(f.timestamp_min, f.timestamp_max)
            and f.limit != 0
            and bool(f.flags & (_AF_DEBITS | _AF_CREDITS))
            and not f.flags & _ACCOUNT_FILTER_FLAGS_PADDING
        )

    def _account_transfers(self, f: AccountFilter) -> list[Transfer]:
        if not self._account_filter_valid(f):
            return []
        transfers = self.transfers_by_account.get(f.account_id, [])
        debits = bool(f.flags & _AF_DEBITS)
        credits = bool(f.flags & _AF_CREDITS)
        account_id = f.account_id

        def matches(t: Transfer) -> bool:
            return (
                ((debits and t.debit_account_id == account_id) or (credits and t.credit_account_id == account_id))
                and (f.user_data_128 == 0 or t.user_data_128 == f.user_data_128)
                and (f.user_data_64 == 0 or t.user_data_64 == f.user_data_64)
                and (f.user_data_32 == 0 or t.user_data_32 == f.user_data_32)
                and (f.code == 0 or t.code == f.code)
            )

        return _scan(
            transfers,
            matches,
            timestamp_min=f.timestamp_min,
            timestamp_max=f.timestamp_max,
            limit=f.limit,
            reversed_=bool(f.flags & _AF_REVERSED),
        )

    def get_account_transfers(self, f: AccountFilter) -> list[Transfer]:
        return [copy_transfer(t) for t in self._account_transfers(f)]

    def get_account_balances(self, f: AccountFilter) -> list[AccountBalance]:
        _check_limit(f.limit)
        account = self.accounts.get(f.account_id)
        if account is None or not account.flags & _A_HISTORY:
            return []
        history = self.history[f.account_id]
        timestamps = [change.timestamp for change in history] if history else []
        balances: list[AccountBalance] = []
        for t in self._account_transfers(f):
            index = bisect.bisect_left(timestamps, t.timestamp)
            assert index < len(history) and history[index].timestamp == t.timestamp
            change = history[index]
            assert change.transfer.id == t.id and t.debit_account_id != t.credit_account_id
            if t.debit_account_id == f.account_id:
                balance = AccountBalance(
                    change.dr_debits_pending,
                    change.dr_debits_posted,
                    change.dr_credits_pending,
                    change.dr_credits_posted,
                    change.timestamp,
                )
            else:
                assert t.credit_account_id == f.account_id
                balance = AccountBalance(
                    change.cr_debits_pending,
                    change.cr_debits_posted,
                    change.cr_credits_pending,
                    change.cr_credits_posted,
                    change.timestamp,
                )
            balances.append(balance)
        return balances

    @staticmethod
    def _query_filter_valid(f: QueryFilter) -> bool:
        """TigerBeetle's get_scan_from_query_filter: an invalid filter matches nothing."""
        _check_limit(f.limit)
        return (
            _timestamp_bounds_valid(f.timestamp_min, f.timestamp_max)
            and f.limit != 0
            and not f.flags & _QUERY_FILTER_FLAGS_PADDING
        )

    def query_accounts(self, f: QueryFilter) -> list[Account]:
        if not self._query_filter_valid(f):
            return []
        found = _scan(
            self.accounts_ordered,
            lambda a: _query_matches(f, a),
            timestamp_min=f.timestamp_min,
            timestamp_max=f.timestamp_max,
            limit=f.limit,
            reversed_=bool(f.flags & _QF_REVERSED),
        )
        return [copy_account(a) for a in found]

    def query_transfers(self, f: QueryFilter) -> list[Transfer]:
        if not self._query_filter_valid(f):
            return []
        found = _scan(
            self.transfers_ordered,
            lambda t: _query_matches(f, t),
            timestamp_min=f.timestamp_min,
            timestamp_max=f.timestamp_max,
            limit=f.limit,
            reversed_=bool(f.flags & _QF_REVERSED),
        )
        return [copy_transfer(t) for t in found]

    def get_change_events(self, f: ChangeEventsFilter) -> list[ChangeEvent]:
        """The filter is valid as TigerBeetle's get_scan_from_change_events_filter has it. Unlike the
        client's queries, a larger `limit` is capped, not refused: the change feed is this engine's own
        call (the official client has none), and pollers ask for pages of their own size."""
        if f.limit == 0 or not _timestamp_bounds_valid(f.timestamp_min, f.timestamp_max):
            return []
        limit = min(f.limit, QUERY_LIMIT_MAX)
        changes = _scan(
            self.changes,
            lambda _: True,
            timestamp_min=f.timestamp_min,
            timestamp_max=f.timestamp_max,
            limit=limit,
            reversed_=False,
        )
        events = []
        accounts = self.accounts
        for change in changes:
            t = change.transfer
            # Copies of the accounts (copy_account's fields) with their balances and flags as of the change.
            dr, cr = accounts[t.debit_account_id], accounts[t.credit_account_id]
            events.append(
                ChangeEvent(
                    change.timestamp,
                    change.type,
                    copy_transfer(t),
                    Account(
                        dr.id, change.dr_debits_pending, change.dr_debits_posted, change.dr_credits_pending,
                        change.dr_credits_posted, dr.user_data_128, dr.user_data_64, dr.user_data_32, dr.ledger,
                        dr.code, change.dr_flags, dr.timestamp, dr.reserved,
                    ),
                    Account(
                        cr.id, change.cr_debits_pending, change.cr_debits_posted, change.cr_credits_pending,
                        change.cr_credits_posted, cr.user_data_128, cr.user_data_64, cr.user_data_32, cr.ledger,
                        cr.code, change.cr_flags, cr.timestamp, cr.reserved,
                    ),
                )
            )  # fmt: skip
        assert len(events) == len(changes)
        return events

    # ------------------------------------------------------------------------------------------
    # Invariants.

    def check_invariants(self) -> None:
        """Double entry holds per ledger, limits hold per account. O(accounts): for tests/recovery."""
        sums: dict[int, list[int]] = {}
        for a in self.accounts_ordered:
            s = sums.setdefault(a.ledger, [0, 0, 0, 0])
            s[0] += a.debits_pending
            s[1] += a.debits_posted
            s[2] += a.credits_pending
            s[3] += a.credits_posted
            assert 0 <= a.debits_pending <= U128_MAX and 0 <= a.credits_pending <= U128_MAX
            if a.flags & _A_DEBITS_MUST_NOT_EXCEED_CREDITS:
                assert a.debits_pending + a.debits_posted <= a.credits_posted, a
            if a.flags & _A_CREDITS_MUST_NOT_EXCEED_DEBITS:
                assert a.credits_pending + a.credits_posted <= a.debits_posted, a
        for ledger, (debits_pending, debits_posted, credits_pending, credits_posted) in sums.items():
            assert debits_posted == credits_posted, f"ledger {ledger}: posted debits != credits"
            assert debits_pending == credits_pending, f"ledger {ledger}: pending debits != credits"
        assert len(self.accounts) == len(self.accounts_ordered)
        assert len(self.transfers) == len(self.transfers_ordered)


def _check_limit(limit: int) -> None:
    """A reply holds at most QUERY_LIMIT_MAX results; TigerBeetle's client refuses a larger `limit`
    with TooMuchDataError before sending (it no longer caps it, since client 0.17.0)."""
    if limit > QUERY_LIMIT_MAX:
        raise TooMuchDataError(f"limit={limit} exceeds the most one reply holds ({QUERY_LIMIT_MAX})")


def _timestamp_bounds_valid(timestamp_min: int, timestamp_max: int) -> bool:
    """Each bound is 0 (unbounded) or inside TigerBeetle's TimestampRange [1, 2^63 - 1], and
    min <= max unless max is unbounded (state_machine.zig get_scan_from_*_filter)."""
    return (
        (timestamp_min == 0 or TIMESTAMP_MIN <= timestamp_min <= TIMESTAMP_MAX)
        and (timestamp_max == 0 or TIMESTAMP_MIN <= timestamp_max <= TIMESTAMP_MAX)
        and (timestamp_max == 0 or timestamp_min <= timestamp_max)
    )


def _query_matches(f: QueryFilter, o: Account | Transfer) -> bool:
    return (
        (f.user_data_128 == 0 or o.user_data_128 == f.user_data_128)
        and (f.user_data_64 == 0 or o.user_data_64 == f.user_data_64)
        and (f.user_data_32 == 0 or o.user_data_32 == f.user_data_32)
        and (f.ledger == 0 or o.ledger == f.ledger)
        and (f.code == 0 or o.code == f.code)
    )


_O = TypeVar("_O", Account, Transfer, _Change)


def _scan(  # noqa: PLR0913  Private; keyword-only: the window's bounds, as each filter type spells them.
    ordered: list[_O],
    matches: Callable[[_O], bool],
    *,
    timestamp_min: int,
    timestamp_max: int,
    limit: int,
    reversed_: bool,
) -> list[_O]:
    """Objects of a timestamp-ordered list within [min, max] (0 = unbounded) that match, at most
    `limit`, in timestamp order or reversed."""
    assert 0 < limit <= QUERY_LIMIT_MAX
    low = bisect.bisect_left(ordered, timestamp_min, key=_timestamp) if timestamp_min else 0
    high = bisect.bisect_right(ordered, timestamp_max, key=_timestamp) if timestamp_max else len(ordered)
    found: list[_O] = []
    indexes = range(high - 1, low - 1, -1) if reversed_ else range(low, high)
    for index in indexes:
        o = ordered[index]
        if matches(o):
            found.append(o)
            if len(found) == limit:
                break
    return found


def _timestamp(o: Account | Transfer | _Change) -> int:
    return o.timestamp


def _timestamp_taken(ordered: list[Account] | list[Transfer], timestamp: int) -> bool:
    index = bisect.bisect_left(ordered, timestamp, key=_timestamp)
    return index < len(ordered) and ordered[index].timestamp == timestamp
