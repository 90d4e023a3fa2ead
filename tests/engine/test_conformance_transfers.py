"""create_transfers conformance: every CreateTransferStatus, precedence, linked chains, two-phase.

Each table case is a list of steps (a batch and the statuses it must return) run against fresh
accounts. Symbolic ids: accounts 1-9, transfers 100+, 99 never exists. Accounts (all ledger 1 unless
noted): 1, 2, 6, 7 plain; 3 ledger 2; 4 debits_must_not_exceed_credits; 5 credits_must_not_exceed_debits.
Expectations follow TigerBeetle's docs (reference/requests/create_transfers.md, transfer.md).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from facade.engine.embedded import EmbeddedLedger
from facade.engine.protocol import Engine
from facade.engine.types import (
    AMOUNT_MAX,
    NS_PER_SECOND,
    U128_MAX,
    Account,
    AccountFlags,
    CreateTransferStatus,
    Transfer,
    TransferFlags,
)

from .conftest import Ids, embedded_only

S = CreateTransferStatus
F = TransferFlags
MAX = U128_MAX

ACCOUNTS = [
    Account(id=1, ledger=1, code=1),
    Account(id=2, ledger=1, code=1),
    Account(id=3, ledger=2, code=1),
    Account(id=4, ledger=1, code=1, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
    Account(id=5, ledger=1, code=1, flags=AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS),
    Account(id=6, ledger=1, code=1),
    Account(id=7, ledger=1, code=1),
]


def t(id: int, debit: int = 1, credit: int = 2, amount: int = 10, flags: int = 0, **fields: int) -> Transfer:
    defaults: dict[str, int] = {"ledger": 1, "code": 1}
    defaults.update(fields)
    return Transfer(id=id, debit_account_id=debit, credit_account_id=credit, amount=amount, flags=flags, **defaults)


def pending(id: int, amount: int = 10, flags: int = 0, **fields: int) -> Transfer:
    return t(id, amount=amount, flags=F.PENDING | flags, **fields)


def resolve(
    id: int, pending_id: int, flags: int, amount: int = 0, debit: int = 0, credit: int = 0, **fields: int
) -> Transfer:
    """A post/void that leaves accounts, ledger and code zero (inherited from the pending transfer)."""
    defaults: dict[str, int] = {"ledger": 0, "code": 0}
    defaults.update(fields)
    return t(id, debit=debit, credit=credit, amount=amount, flags=flags, pending_id=pending_id, **defaults)


@dataclass
class Case:
    name: str
    steps: list[tuple[list[Transfer], list[CreateTransferStatus]]]
    covers: set[CreateTransferStatus] = field(default_factory=set)


def case(name: str, *steps: tuple[list[Transfer], list[CreateTransferStatus]]) -> Case:
    return Case(name, list(steps), {s for _, statuses in steps for s in statuses})


CASES = [
    case("created", ([t(100)], [S.CREATED])),
    # Linked chains.
    case(
        "chain_fails_when_a_later_event_fails",
        ([t(100, flags=F.LINKED), t(101, debit=99)], [S.LINKED_EVENT_FAILED, S.DEBIT_ACCOUNT_NOT_FOUND]),
    ),
    case(
        "chain_fails_after_the_failing_event",
        ([t(100, credit=1, flags=F.LINKED), t(101)], [S.ACCOUNTS_MUST_BE_DIFFERENT, S.LINKED_EVENT_FAILED]),
    ),
    case("chain_open_at_batch_end", ([t(100), t(101, flags=F.LINKED)], [S.CREATED, S.LINKED_EVENT_CHAIN_OPEN])),
    case(
        "chain_open_fails_the_whole_chain",
        (
            [t(100, flags=F.LINKED), t(101, flags=F.LINKED)],
            [S.LINKED_EVENT_FAILED, S.LINKED_EVENT_CHAIN_OPEN],
        ),
    ),
    case(
        "exists_breaks_a_chain",
        ([t(100)], [S.CREATED]),
        ([t(101, flags=F.LINKED), t(100), t(102)], [S.LINKED_EVENT_FAILED, S.EXISTS, S.CREATED]),
    ),
    case(
        "chains_are_independent",
        (
            [t(100, flags=F.LINKED), t(101, debit=99), t(102, flags=F.LINKED), t(103)],
            [S.LINKED_EVENT_FAILED, S.DEBIT_ACCOUNT_NOT_FOUND, S.CREATED, S.CREATED],
        ),
    ),
    case(
        "imported_event_not_expected",
        ([t(100), t(101, flags=F.IMPORTED, timestamp=1)], [S.CREATED, S.IMPORTED_EVENT_NOT_EXPECTED]),
    ),
    case("timestamp_must_be_zero", ([t(100, timestamp=1)], [S.TIMESTAMP_MUST_BE_ZERO])),
    case(
        "imported_event_timestamp_out_of_range",
        ([t(100, flags=F.IMPORTED, timestamp=0)], [S.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE]),
        ([t(101, flags=F.IMPORTED, timestamp=1 << 63)], [S.IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE]),
    ),
    case(
        "imported_event_timestamp_must_not_advance",
        ([t(100, flags=F.IMPORTED, timestamp=(1 << 63) - 1)], [S.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE]),
    ),
    case("reserved_flag", ([t(100, flags=1 << 9)], [S.RESERVED_FLAG])),
    case("id_must_not_be_zero", ([t(0)], [S.ID_MUST_NOT_BE_ZERO])),
    case("id_must_not_be_int_max", ([t(MAX)], [S.ID_MUST_NOT_BE_INT_MAX])),
    # exists: compared before any other validation; balances and timestamps are ignored.
    case(
        "exists_with_different_flags",
        ([t(100)], [S.CREATED]),
        ([t(100, flags=F.PENDING)], [S.EXISTS_WITH_DIFFERENT_FLAGS]),
    ),
    case(
        "exists_with_different_pending_id",
        ([t(100)], [S.CREATED]),
        ([t(100, pending_id=5)], [S.EXISTS_WITH_DIFFERENT_PENDING_ID]),
    ),
    case(
        "exists_with_different_timeout",
        ([pending(100, timeout=100)], [S.CREATED]),
        ([pending(100, timeout=200)], [S.EXISTS_WITH_DIFFERENT_TIMEOUT]),
    ),
    case(
        "exists_with_different_debit_account_id",
        ([t(100)], [S.CREATED]),
        ([t(100, debit=6)], [S.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID]),
    ),
    case(
        "exists_with_different_credit_account_id",
        ([t(100)], [S.CREATED]),
        ([t(100, credit=6)], [S.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID]),
    ),
    case(
        "exists_with_different_amount",
        ([t(100)], [S.CREATED]),
        ([t(100, amount=11)], [S.EXISTS_WITH_DIFFERENT_AMOUNT]),
    ),
    case(
        "exists_with_different_user_data_128",
        ([t(100)], [S.CREATED]),
        ([t(100, user_data_128=1)], [S.EXISTS_WITH_DIFFERENT_USER_DATA_128]),
    ),
    case(
        "exists_with_different_user_data_64",
        ([t(100)], [S.CREATED]),
        ([t(100, user_data_64=1)], [S.EXISTS_WITH_DIFFERENT_USER_DATA_64]),
    ),
    case(
        "exists_with_different_user_data_32",
        ([t(100)], [S.CREATED]),
        ([t(100, user_data_32=1)], [S.EXISTS_WITH_DIFFERENT_USER_DATA_32]),
    ),
    case(
        "exists_with_different_ledger",
        ([t(100)], [S.CREATED]),
        ([t(100, ledger=2)], [S.EXISTS_WITH_DIFFERENT_LEDGER]),
    ),
    case(
        "exists_with_different_code",
        ([t(100)], [S.CREATED]),
        ([t(100, code=2)], [S.EXISTS_WITH_DIFFERENT_CODE]),
    ),
    case("exists", ([t(100)], [S.CREATED]), ([t(100)], [S.EXISTS])),
    case(
        "exists_wins_over_validation",
        ([t(100)], [S.CREATED]),
        ([t(100, debit=0)], [S.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID]),
    ),
    case(
        "id_already_failed_after_a_transient_failure",
        ([t(100, debit=99)], [S.DEBIT_ACCOUNT_NOT_FOUND]),
        ([t(100)], [S.ID_ALREADY_FAILED]),
    ),
    case(
        "id_already_failed_even_inside_a_rolled_back_chain",
        ([t(100, flags=F.LINKED), t(101, debit=4, amount=1)], [S.LINKED_EVENT_FAILED, S.EXCEEDS_CREDITS]),
        ([t(100), t(101)], [S.CREATED, S.ID_ALREADY_FAILED]),
    ),
    case(
        "non_transient_failures_do_not_burn_the_id",
        ([t(100, credit=1)], [S.ACCOUNTS_MUST_BE_DIFFERENT]),
        ([t(100)], [S.CREATED]),
    ),
    case(
        "flags_are_mutually_exclusive",
        ([t(100, flags=F.PENDING | F.POST_PENDING_TRANSFER, pending_id=5)], [S.FLAGS_ARE_MUTUALLY_EXCLUSIVE]),
        (
            [t(101, flags=F.POST_PENDING_TRANSFER | F.VOID_PENDING_TRANSFER, pending_id=5)],
            [S.FLAGS_ARE_MUTUALLY_EXCLUSIVE],
        ),
        (
            [t(102, flags=F.VOID_PENDING_TRANSFER | F.BALANCING_DEBIT, pending_id=5)],
            [S.FLAGS_ARE_MUTUALLY_EXCLUSIVE],
        ),
    ),
    case("debit_account_id_must_not_be_zero", ([t(100, debit=0)], [S.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO])),
    case(
        "debit_account_id_must_not_be_int_max",
        ([t(100, debit=MAX)], [S.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX]),
    ),
    case("credit_account_id_must_not_be_zero", ([t(100, credit=0)], [S.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO])),
    case(
        "credit_account_id_must_not_be_int_max",
        ([t(100, credit=MAX)], [S.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX]),
    ),
    case("accounts_must_be_different", ([t(100, credit=1)], [S.ACCOUNTS_MUST_BE_DIFFERENT])),
    case("pending_id_must_be_zero", ([t(100, pending_id=5)], [S.PENDING_ID_MUST_BE_ZERO])),
    case(
        "pending_id_must_not_be_zero",
        ([resolve(100, 0, F.POST_PENDING_TRANSFER)], [S.PENDING_ID_MUST_NOT_BE_ZERO]),
    ),
    case(
        "pending_id_must_not_be_int_max",
        ([resolve(100, MAX, F.VOID_PENDING_TRANSFER)], [S.PENDING_ID_MUST_NOT_BE_INT_MAX]),
    ),
    case(
        "pending_id_must_be_different",
        ([resolve(100, 100, F.POST_PENDING_TRANSFER)], [S.PENDING_ID_MUST_BE_DIFFERENT]),
    ),
    case(
        "timeout_reserved_for_pending_transfer",
        ([t(100, timeout=1)], [S.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER]),
    ),
    case(
        "closing_transfer_must_be_pending",
        ([t(100, flags=F.CLOSING_DEBIT)], [S.CLOSING_TRANSFER_MUST_BE_PENDING]),
    ),
    case("ledger_must_not_be_zero", ([t(100, ledger=0)], [S.LEDGER_MUST_NOT_BE_ZERO])),
    case("code_must_not_be_zero", ([t(100, code=0)], [S.CODE_MUST_NOT_BE_ZERO])),
    case("ledger_zero_precedes_account_lookup", ([t(100, debit=99, ledger=0)], [S.LEDGER_MUST_NOT_BE_ZERO])),
    case("debit_account_not_found", ([t(100, debit=99)], [S.DEBIT_ACCOUNT_NOT_FOUND])),
    case("credit_account_not_found", ([t(100, credit=99)], [S.CREDIT_ACCOUNT_NOT_FOUND])),
    case("accounts_must_have_the_same_ledger", ([t(100, credit=3)], [S.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER])),
    case(
        "transfer_must_have_the_same_ledger_as_accounts",
        ([t(100, ledger=2)], [S.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS]),
    ),
    case(
        "pending_transfer_not_found",
        ([resolve(101, 100, F.POST_PENDING_TRANSFER)], [S.PENDING_TRANSFER_NOT_FOUND]),
    ),
    case(
        "pending_transfer_not_pending",
        ([t(100)], [S.CREATED]),
        ([resolve(101, 100, F.POST_PENDING_TRANSFER)], [S.PENDING_TRANSFER_NOT_PENDING]),
    ),
    case(
        "pending_transfer_has_different_debit_account_id",
        ([pending(100)], [S.CREATED]),
        (
            [resolve(101, 100, F.POST_PENDING_TRANSFER, debit=6)],
            [S.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID],
        ),
    ),
    case(
        "pending_transfer_has_different_credit_account_id",
        ([pending(100)], [S.CREATED]),
        (
            [resolve(101, 100, F.VOID_PENDING_TRANSFER, credit=6)],
            [S.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID],
        ),
    ),
    case(
        "pending_transfer_has_different_ledger",
        ([pending(100)], [S.CREATED]),
        ([resolve(101, 100, F.POST_PENDING_TRANSFER, ledger=2)], [S.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER]),
    ),
    case(
        "pending_transfer_has_different_code",
        ([pending(100)], [S.CREATED]),
        ([resolve(101, 100, F.POST_PENDING_TRANSFER, code=2)], [S.PENDING_TRANSFER_HAS_DIFFERENT_CODE]),
    ),
    case(
        "exceeds_pending_transfer_amount",
        ([pending(100)], [S.CREATED]),
        ([resolve(101, 100, F.POST_PENDING_TRANSFER, amount=11)], [S.EXCEEDS_PENDING_TRANSFER_AMOUNT]),
    ),
    case(
        "pending_transfer_has_different_amount",
        ([pending(100)], [S.CREATED]),
        ([resolve(101, 100, F.VOID_PENDING_TRANSFER, amount=5)], [S.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT]),
    ),
    case(
        "pending_transfer_already_posted",
        ([pending(100)], [S.CREATED]),
        ([resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX)], [S.CREATED]),
        ([resolve(102, 100, F.VOID_PENDING_TRANSFER)], [S.PENDING_TRANSFER_ALREADY_POSTED]),
    ),
    case(
        "pending_transfer_already_voided",
        ([pending(100)], [S.CREATED]),
        ([resolve(101, 100, F.VOID_PENDING_TRANSFER)], [S.CREATED]),
        (
            [resolve(102, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX)],
            [S.PENDING_TRANSFER_ALREADY_VOIDED],
        ),
    ),
    case(
        "debit_account_already_closed",
        ([pending(100, flags=F.CLOSING_DEBIT)], [S.CREATED]),
        ([t(101)], [S.DEBIT_ACCOUNT_ALREADY_CLOSED]),
    ),
    case(
        "credit_account_already_closed",
        ([pending(100, flags=F.CLOSING_CREDIT)], [S.CREATED]),
        ([t(101, debit=6)], [S.CREDIT_ACCOUNT_ALREADY_CLOSED]),
    ),
    case(
        "voiding_the_closing_transfer_reopens_the_account",
        ([pending(100, flags=F.CLOSING_DEBIT)], [S.CREATED]),
        ([resolve(101, 100, F.VOID_PENDING_TRANSFER)], [S.CREATED]),
        ([t(102)], [S.CREATED]),
    ),
    case(
        "overflows_debits_pending",
        ([pending(100, amount=MAX)], [S.CREATED]),
        ([pending(101, amount=1, credit=6)], [S.OVERFLOWS_DEBITS_PENDING]),
    ),
    case(
        "overflows_credits_pending",
        ([pending(100, amount=MAX)], [S.CREATED]),
        ([pending(101, amount=1, debit=6)], [S.OVERFLOWS_CREDITS_PENDING]),
    ),
    case(
        "overflows_debits_posted",
        ([t(100, amount=MAX)], [S.CREATED]),
        ([t(101, amount=1, credit=6)], [S.OVERFLOWS_DEBITS_POSTED]),
    ),
    case(
        "overflows_credits_posted",
        ([t(100, amount=MAX)], [S.CREATED]),
        ([t(101, amount=1, debit=6)], [S.OVERFLOWS_CREDITS_POSTED]),
    ),
    case(
        "overflows_debits",
        ([t(100, amount=MAX - 1), pending(101, amount=1, credit=6)], [S.CREATED, S.CREATED]),
        ([t(102, amount=1, credit=7)], [S.OVERFLOWS_DEBITS]),
    ),
    case(
        "overflows_credits",
        ([t(100, amount=MAX - 1), pending(101, amount=1, debit=6)], [S.CREATED, S.CREATED]),
        ([t(102, amount=1, debit=7)], [S.OVERFLOWS_CREDITS]),
    ),
    case("exceeds_credits", ([t(100, debit=4, amount=1)], [S.EXCEEDS_CREDITS])),
    case("exceeds_debits", ([t(100, credit=5, amount=1)], [S.EXCEEDS_DEBITS])),
    case(
        "limit_ignores_pending_credits",
        ([pending(100, debit=1, credit=4, amount=50)], [S.CREATED]),
        ([t(101, debit=4, amount=1)], [S.EXCEEDS_CREDITS]),
    ),
    case(
        "limit_allows_up_to_posted_credits",
        ([t(100, debit=1, credit=4, amount=50)], [S.CREATED]),
        ([t(101, debit=4, amount=50), t(102, debit=4, amount=1)], [S.CREATED, S.EXCEEDS_CREDITS]),
    ),
    case("zero_amount_is_allowed", ([t(100, amount=0)], [S.CREATED])),
    # issue 10, differences from TigerBeetle 0.17.8 (state_machine.zig is the authority where the docs
    # are silent; each case says which).
    # 1. A void's amount is compared with the pending amount before "different amount": anything above
    #    it (AMOUNT_MAX included: only a post reads AMOUNT_MAX as "the full amount") exceeds it.
    #    Docs: create_transfers.md#exceeds_pending_transfer_amount; precedence 31 before 32.
    case(
        "void_above_the_pending_amount_exceeds_it",
        ([pending(100)], [S.CREATED]),
        (
            [
                resolve(101, 100, F.VOID_PENDING_TRANSFER, amount=11),
                resolve(102, 100, F.VOID_PENDING_TRANSFER, amount=AMOUNT_MAX),
                resolve(103, 100, F.POST_PENDING_TRANSFER, amount=11),
                resolve(104, 100, F.VOID_PENDING_TRANSFER, amount=9),
            ],
            [
                S.EXCEEDS_PENDING_TRANSFER_AMOUNT,
                S.EXCEEDS_PENDING_TRANSFER_AMOUNT,
                S.EXCEEDS_PENDING_TRANSFER_AMOUNT,
                S.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT,
            ],
        ),
        ([resolve(105, 100, F.VOID_PENDING_TRANSFER, amount=10)], [S.CREATED]),
    ),
    # 2. A closing pending transfer can only be voided (or expire): a post finds its account closed.
    #    Docs: transfer.md#flagsclosing_debit ("reversible by voiding"); state_machine.zig
    #    post_or_void_pending_transfer: "The only movement allowed in a closed account is voiding".
    case(
        "closing_debit_pending_transfer_cannot_be_posted",
        ([pending(100, flags=F.CLOSING_DEBIT)], [S.CREATED]),
        ([resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX)], [S.DEBIT_ACCOUNT_ALREADY_CLOSED]),
        ([resolve(101, 100, F.VOID_PENDING_TRANSFER)], [S.ID_ALREADY_FAILED]),  # Transient: id burned.
        ([resolve(102, 100, F.VOID_PENDING_TRANSFER)], [S.CREATED]),
        ([t(103)], [S.CREATED]),
    ),
    case(
        "closing_credit_pending_transfer_cannot_be_posted",
        ([pending(100, flags=F.CLOSING_CREDIT)], [S.CREATED]),
        ([resolve(101, 100, F.POST_PENDING_TRANSFER, amount=4)], [S.CREDIT_ACCOUNT_ALREADY_CLOSED]),
    ),
    case(
        "other_pending_transfers_of_a_closed_account_can_be_voided_not_posted",
        # Docs (recipes/close-account.md) say pending transfers of a closed account "can still time out but
        # can't be posted or voided"; state_machine.zig 0.17.8 lets voids through. The source wins.
        ([pending(100, amount=5), pending(101, flags=F.CLOSING_DEBIT, credit=6)], [S.CREATED, S.CREATED]),
        ([resolve(102, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX)], [S.DEBIT_ACCOUNT_ALREADY_CLOSED]),
        ([resolve(103, 100, F.VOID_PENDING_TRANSFER)], [S.CREATED]),
    ),
    # 3. A linked last event reports the open chain even when its chain broke earlier.
    #    state_machine.zig execute_create checks `index == events.len - 1` before `chain_broken`;
    #    linked-events.md and create_transfers.md#linked_event_chain_open are silent on the combination.
    case(
        "chain_open_wins_over_a_broken_chain",
        (
            [t(100, debit=99, flags=F.LINKED), t(101, flags=F.LINKED)],
            [S.DEBIT_ACCOUNT_NOT_FOUND, S.LINKED_EVENT_CHAIN_OPEN],
        ),
        (
            [t(102, flags=F.LINKED), t(103, debit=99, flags=F.LINKED), t(104, flags=F.LINKED)],
            [S.LINKED_EVENT_FAILED, S.DEBIT_ACCOUNT_NOT_FOUND, S.LINKED_EVENT_CHAIN_OPEN],
        ),
    ),
    # 4. A resubmitted post/void is compared with what was stored: 0 and AMOUNT_MAX are no wildcards.
    #    Void: 0 means "the pending amount", a post: AMOUNT_MAX means "the pending amount"; a zero
    #    user_data means "the pending transfer's". create_transfers.md#exists_with_different_amount is
    #    silent on post/void; state_machine.zig post_or_void_pending_transfer_exists is the authority.
    case(
        "full_post_retried_with_zero_amount",
        ([pending(100)], [S.CREATED]),
        ([resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX)], [S.CREATED]),
        (
            [
                resolve(101, 100, F.POST_PENDING_TRANSFER, amount=0),
                resolve(101, 100, F.POST_PENDING_TRANSFER, amount=10),
                resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX),
            ],
            [S.EXISTS_WITH_DIFFERENT_AMOUNT, S.EXISTS, S.EXISTS],
        ),
    ),
    case(
        "partial_post_retried_with_amount_max",
        ([pending(100)], [S.CREATED]),
        ([resolve(101, 100, F.POST_PENDING_TRANSFER, amount=4)], [S.CREATED]),
        (
            [
                resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX),
                resolve(101, 100, F.POST_PENDING_TRANSFER, amount=0),
                resolve(101, 100, F.POST_PENDING_TRANSFER, amount=4),
            ],
            [S.EXISTS_WITH_DIFFERENT_AMOUNT, S.EXISTS_WITH_DIFFERENT_AMOUNT, S.EXISTS],
        ),
    ),
    case(
        "void_retried_with_amount_max",
        ([pending(100)], [S.CREATED]),
        ([resolve(101, 100, F.VOID_PENDING_TRANSFER)], [S.CREATED]),
        (
            [
                resolve(101, 100, F.VOID_PENDING_TRANSFER, amount=AMOUNT_MAX),
                resolve(101, 100, F.VOID_PENDING_TRANSFER, amount=10),
                resolve(101, 100, F.VOID_PENDING_TRANSFER, amount=0),
            ],
            [S.EXISTS_WITH_DIFFERENT_AMOUNT, S.EXISTS, S.EXISTS],
        ),
    ),
    case(
        "post_retried_without_its_user_data",
        ([pending(100, user_data_128=3, user_data_64=3, user_data_32=3)], [S.CREATED]),
        ([resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX, user_data_128=8)], [S.CREATED]),
        (
            [
                resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX),
                resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX, user_data_128=8, user_data_64=3),
                resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX, user_data_128=8, user_data_64=4),
                resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX, user_data_128=8, user_data_32=5),
                # Accounts, ledger and code stay "inherit" (0) or must equal the stored ones.
                resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX, user_data_128=8, debit=6),
                resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX, user_data_128=8, ledger=1, code=2),
            ],
            [
                S.EXISTS_WITH_DIFFERENT_USER_DATA_128,
                S.EXISTS,
                S.EXISTS_WITH_DIFFERENT_USER_DATA_64,
                S.EXISTS_WITH_DIFFERENT_USER_DATA_32,
                S.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID,
                S.EXISTS_WITH_DIFFERENT_CODE,
            ],
        ),
    ),
]

# Statuses that need the clock or imported timestamps relative to existing objects: covered by the
# dedicated tests below. OVERFLOWS_TIMEOUT needs a clock within 2^32 s of TigerBeetle's 2^63 - 1
# timestamp ceiling (year 2262): only the embedded engine, with an injected clock, can be asked.
COVERED_ELSEWHERE = {
    S.IMPORTED_EVENT_EXPECTED,
    S.PENDING_TRANSFER_EXPIRED,
    S.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS,
    S.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT,
    S.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT,
    S.IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO,
    S.OVERFLOWS_TIMEOUT,
}


async def setup_accounts(engine: Engine, ids: Ids, accounts: list[Account] = ACCOUNTS) -> None:
    results = await engine.create_accounts([ids.account(a) for a in accounts])
    assert [r.status.name for r in results] == ["CREATED"] * len(accounts)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_create_transfers_table(engine: Engine, ids: Ids, case: Case) -> None:
    await setup_accounts(engine, ids)
    for batch, expected in case.steps:
        results = await engine.create_transfers([ids.transfer(x) for x in batch])
        assert [r.status for r in results] == expected


def test_every_status_is_covered() -> None:
    covered = set().union(*(c.covers for c in CASES)) | COVERED_ELSEWHERE
    assert covered == set(S), f"uncovered: {set(S) - covered}"


async def test_result_timestamps(engine: Engine, ids: Ids) -> None:
    """created → the new transfer's timestamp; exists → the original's; failures → the slot's."""
    await setup_accounts(engine, ids)
    [first] = await engine.create_transfers([ids.transfer(t(100))])
    results = await engine.create_transfers([ids.transfer(x) for x in (t(101), t(100), t(102, debit=99))])
    assert [r.status for r in results] == [S.CREATED, S.EXISTS, S.DEBIT_ACCOUNT_NOT_FOUND]
    assert results[1].timestamp == first.timestamp
    assert first.timestamp < results[0].timestamp < results[2].timestamp
    stored = await engine.lookup_transfers([ids(101), ids(100)])
    assert [x.timestamp for x in stored] == [results[0].timestamp, first.timestamp]


async def test_rolled_back_chain_changes_no_balance(engine: Engine, ids: Ids) -> None:
    await setup_accounts(engine, ids)
    results = await engine.create_transfers(
        [ids.transfer(x) for x in (t(100, flags=F.LINKED), t(101, flags=F.LINKED), t(102, debit=99))]
    )
    assert [r.status for r in results] == [
        S.LINKED_EVENT_FAILED,
        S.LINKED_EVENT_FAILED,
        S.DEBIT_ACCOUNT_NOT_FOUND,
    ]
    accounts = await engine.lookup_accounts([ids(1), ids(2)])
    assert all(a.debits_posted == a.credits_posted == 0 for a in accounts)
    assert await engine.lookup_transfers([ids(100), ids(101)]) == []
    # The rolled-back ids did not fail themselves: they can still be created.
    results = await engine.create_transfers([ids.transfer(t(100)), ids.transfer(t(101))])
    assert [r.status for r in results] == [S.CREATED, S.CREATED]


async def test_two_phase_post_partial_and_full(engine: Engine, ids: Ids) -> None:
    await setup_accounts(engine, ids)
    await engine.create_transfers([ids.transfer(pending(100, amount=100)), ids.transfer(pending(101, amount=40))])
    [debit] = await engine.lookup_accounts([ids(1)])
    assert (debit.debits_pending, debit.debits_posted) == (140, 0)
    results = await engine.create_transfers(
        [
            ids.transfer(resolve(102, 100, F.POST_PENDING_TRANSFER, amount=30)),
            ids.transfer(resolve(103, 101, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX)),
        ]
    )
    assert [r.status for r in results] == [S.CREATED, S.CREATED]
    [debit, credit] = await engine.lookup_accounts([ids(1), ids(2)])
    assert (debit.debits_pending, debit.debits_posted) == (0, 70)
    assert (credit.credits_pending, credit.credits_posted) == (0, 70)
    [partial, full] = await engine.lookup_transfers([ids(102), ids(103)])
    # The stored post inherits accounts, ledger and code from the pending transfer.
    assert (partial.amount, partial.debit_account_id, partial.ledger, partial.code) == (30, ids(1), 1, 1)
    assert full.amount == 40
    # Retrying a post with inherited (zero) fields is `exists`.
    retry = await engine.create_transfers([ids.transfer(resolve(103, 101, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX))])
    assert [r.status for r in retry] == [S.EXISTS]


async def test_balancing_debit_and_credit(engine: Engine, ids: Ids) -> None:
    await setup_accounts(engine, ids)
    await engine.create_transfers([ids.transfer(t(100, debit=1, credit=4, amount=30))])  # 4 has 30 credits.
    results = await engine.create_transfers(
        [ids.transfer(t(101, debit=4, credit=2, amount=1000, flags=F.BALANCING_DEBIT))]
    )
    assert [r.status for r in results] == [S.CREATED]
    [balanced] = await engine.lookup_transfers([ids(101)])
    assert balanced.amount == 30
    [account4] = await engine.lookup_accounts([ids(4)])
    assert account4.debits_posted == account4.credits_posted == 30
    # Now zero is left: a balancing transfer moves 0, and a retry with amount >= 30 is `exists`.
    results = await engine.create_transfers(
        [
            ids.transfer(t(102, debit=4, credit=2, amount=5, flags=F.BALANCING_DEBIT)),
            ids.transfer(t(101, debit=4, credit=2, amount=30, flags=F.BALANCING_DEBIT)),
            ids.transfer(t(101, debit=4, credit=2, amount=29, flags=F.BALANCING_DEBIT)),
        ]
    )
    assert [r.status for r in results] == [S.CREATED, S.EXISTS, S.EXISTS_WITH_DIFFERENT_AMOUNT]
    [zero] = await engine.lookup_transfers([ids(102)])
    assert zero.amount == 0
    # balancing_credit mirrors it on the credit account: 5 has debits 0, so it can take 0.
    await engine.create_transfers([ids.transfer(t(103, debit=5, credit=2, amount=20))])  # 5 has 20 debits.
    results = await engine.create_transfers(
        [ids.transfer(t(104, debit=1, credit=5, amount=500, flags=F.BALANCING_CREDIT))]
    )
    assert [r.status for r in results] == [S.CREATED]
    [credit_balanced] = await engine.lookup_transfers([ids(104)])
    assert credit_balanced.amount == 20


async def test_pending_transfer_expires(engine: Engine, ids: Ids) -> None:
    await setup_accounts(engine, ids)
    await engine.create_transfers([ids.transfer(pending(100, amount=25, timeout=1))])
    await asyncio.sleep(1.1)
    results = await engine.create_transfers(
        [ids.transfer(resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX))]
    )
    assert [r.status for r in results] == [S.PENDING_TRANSFER_EXPIRED]
    # The reservation is released (TigerBeetle's pulse may lag briefly: poll within a bound).
    deadline = time.monotonic() + 5
    while True:
        [debit] = await engine.lookup_accounts([ids(1)])
        if debit.debits_pending == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert (debit.debits_pending, debit.debits_posted) == (0, 0)
    results = await engine.create_transfers([ids.transfer(resolve(102, 100, F.VOID_PENDING_TRANSFER))])
    assert [r.status for r in results] == [S.PENDING_TRANSFER_EXPIRED]


async def imported_accounts(engine: Engine, ids: Ids, base_ns: int) -> None:
    accounts = [
        Account(id=ids(1), ledger=1, code=1, flags=AccountFlags.IMPORTED, timestamp=base_ns + 1),
        Account(id=ids(2), ledger=1, code=1, flags=AccountFlags.IMPORTED, timestamp=base_ns + 2),
    ]
    results = await engine.create_accounts(accounts)
    assert [r.status.name for r in results] == ["CREATED", "CREATED"]
    assert [r.timestamp for r in results] == [base_ns + 1, base_ns + 2]


def imported(id: int, timestamp: int, **fields: int) -> Transfer:
    flags = F.IMPORTED | fields.pop("flags", 0)
    return t(id, flags=flags, timestamp=timestamp, **fields)


async def test_imported_transfers(engine: Engine, ids: Ids) -> None:
    # User timestamps must lie after every existing object and before the cluster's clock.
    base = time.time_ns()
    await asyncio.sleep(0.01)
    await imported_accounts(engine, ids, base)
    batch = [ids.transfer(imported(100, base + 10)), ids.transfer(t(101))]
    results = await engine.create_transfers(batch)
    assert [r.status for r in results] == [S.CREATED, S.IMPORTED_EVENT_EXPECTED]
    assert results[0].timestamp == base + 10
    results = await engine.create_transfers(
        [
            ids.transfer(imported(102, base + 10)),  # Not after the last transfer.
            ids.transfer(imported(103, base + 11, timeout=5, flags=F.PENDING)),
            ids.transfer(imported(104, base + 12)),
        ]
    )
    assert [r.status for r in results] == [
        S.IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS,
        S.IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO,
        S.CREATED,
    ]
    [stored] = await engine.lookup_transfers([ids(104)])
    assert stored.timestamp == base + 12


async def test_imported_transfer_must_postdate_its_accounts(engine: Engine, ids: Ids) -> None:
    base = time.time_ns()
    await asyncio.sleep(0.01)
    await imported_accounts(engine, ids, base)
    await engine.create_accounts(
        [Account(id=ids(6), ledger=1, code=1, flags=AccountFlags.IMPORTED, timestamp=base + 100)]
    )
    # Transfers after account 1/2 but before account 6.
    results = await engine.create_transfers([ids.transfer(imported(100, base + 50, debit=6, credit=2))])
    assert [r.status for r in results] == [S.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT]
    results = await engine.create_transfers([ids.transfer(imported(101, base + 51, debit=1, credit=6))])
    assert [r.status for r in results] == [S.IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT]


async def test_refused_post_of_a_closing_transfer_moves_no_money(engine: Engine, ids: Ids) -> None:
    """issue 10 #2: the refused post leaves the reservation and the closed flag as they were; the void
    that follows releases it and reopens the account."""
    await setup_accounts(engine, ids)
    await engine.create_transfers([ids.transfer(pending(100, amount=10, flags=F.CLOSING_DEBIT))])
    results = await engine.create_transfers(
        [ids.transfer(resolve(101, 100, F.POST_PENDING_TRANSFER, amount=AMOUNT_MAX))]
    )
    assert [r.status for r in results] == [S.DEBIT_ACCOUNT_ALREADY_CLOSED]
    [debit, credit] = await engine.lookup_accounts([ids(1), ids(2)])
    assert (debit.debits_pending, debit.debits_posted, credit.credits_pending, credit.credits_posted) == (10, 0, 10, 0)
    assert debit.flags & AccountFlags.CLOSED
    assert await engine.lookup_transfers([ids(101)]) == []
    results = await engine.create_transfers([ids.transfer(resolve(102, 100, F.VOID_PENDING_TRANSFER))])
    assert [r.status for r in results] == [S.CREATED]
    [debit, credit] = await engine.lookup_accounts([ids(1), ids(2)])
    assert (debit.debits_pending, debit.debits_posted, credit.credits_pending, credit.credits_posted) == (0, 0, 0, 0)
    assert not debit.flags & AccountFlags.CLOSED


async def test_rolled_back_imported_chain_keeps_imported_timestamps(engine: Engine, ids: Ids) -> None:
    """issue 10 #5: rolling a chain back changes the earlier events' status to linked_event_failed and
    nothing else: an imported event that had been created keeps its imported timestamp in the result
    (state_machine.zig execute_create rewrites only `results[chain_index].status`; the docs on
    imported events and linked chains are silent on result timestamps)."""
    base = time.time_ns()
    await asyncio.sleep(0.01)
    await imported_accounts(engine, ids, base)
    results = await engine.create_transfers(
        [
            ids.transfer(imported(100, base + 10, flags=F.LINKED)),
            ids.transfer(imported(101, base + 11, flags=F.LINKED)),
            ids.transfer(imported(102, base + 12, debit=99)),
            ids.transfer(imported(103, base + 13)),
        ]
    )
    assert [r.status for r in results] == [
        S.LINKED_EVENT_FAILED,
        S.LINKED_EVENT_FAILED,
        S.DEBIT_ACCOUNT_NOT_FOUND,
        S.CREATED,
    ]
    assert [results[0].timestamp, results[1].timestamp, results[3].timestamp] == [base + 10, base + 11, base + 13]
    # The failing event itself reports its slot (it was never created): after every imported one.
    assert results[2].timestamp > base + 13
    assert await engine.lookup_transfers([ids(100), ids(101)]) == []


def test_overflows_timeout_near_the_timestamp_ceiling(tmp_path: Path) -> None:
    """TigerBeetle sums timestamp + timeout in u63 (state_machine.zig create_transfer): a pending
    transfer whose expiry would pass 2^63 - 1 is refused. Embedded only: it needs the clock there."""
    timestamp_ceiling = (1 << 63) - 1
    clock_ns = timestamp_ceiling - 10 * NS_PER_SECOND
    ledger = EmbeddedLedger.open(tmp_path / "engine", clock=lambda: clock_ns)
    try:
        accounts = [Account(id=i, ledger=1, code=1) for i in (1, 2)]
        assert [r.status.name for r in ledger.create_accounts(accounts)] == ["CREATED", "CREATED"]
        results = ledger.create_transfers([pending(100, timeout=11), pending(101, timeout=9), pending(102, timeout=0)])
        assert [r.status for r in results] == [S.OVERFLOWS_TIMEOUT, S.CREATED, S.CREATED]
    finally:
        ledger.close()


async def test_imported_post_or_void_of_a_pending_transfer_with_a_timeout(engine: Engine, ids: Ids) -> None:
    """Docs (create_transfers.md, imported events) allow posting or voiding with an imported event and
    say nothing against a pending transfer with a timeout. TigerBeetle 0.17.8 trips an assertion on it
    (post_or_void_pending_transfer: `assert(!t.flags.imported)` while removing the expiry): the replica
    crashes, and again on every restart. Fixed upstream by tigerbeetle/tigerbeetle PR #3867 (assertions
    removed, the post/void succeeds); the embedded engine does what the fix does."""
    embedded_only(engine, "TigerBeetle 0.17.8 crashes on this request (tigerbeetle/tigerbeetle PR #3867)")
    await setup_accounts(engine, ids)
    await engine.create_transfers([ids.transfer(pending(100, amount=10, timeout=3600))])
    await engine.create_transfers([ids.transfer(pending(101, amount=4, timeout=3600))])
    [newest] = await engine.lookup_transfers([ids(101)])
    results = await engine.create_transfers(
        [
            ids.transfer(imported(102, newest.timestamp + 1, flags=F.POST_PENDING_TRANSFER, pending_id=100, amount=6)),
            ids.transfer(imported(103, newest.timestamp + 2, flags=F.VOID_PENDING_TRANSFER, pending_id=101, amount=0)),
        ]
    )
    assert [r.status for r in results] == [S.CREATED, S.CREATED]
    [debit] = await engine.lookup_accounts([ids(1)])
    assert (debit.debits_pending, debit.debits_posted) == (0, 6)
