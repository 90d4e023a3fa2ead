"""The ledger engine's data types: TigerBeetle 0.17's, field for field and value for value.

The names, field order, flag bits and result-code values are TigerBeetle's (`src/tigerbeetle.zig`,
mirrored by the official Python client's `tigerbeetle.bindings`), so the TigerBeetle backend is a
field-by-field copy and code written against one backend runs unchanged on the other.

Integers are Python ints with TigerBeetle's widths (u128 ids and amounts, u64 timestamps, ...). The
engines check widths at their edge (`validate_*`) because a wider value cannot exist in TigerBeetle.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Limits, TigerBeetle's (config.zig with the default 1 MiB message size).
BATCH_EVENTS_MAX = 8189
"""Most events (accounts, transfers or ids) in one request."""
QUERY_LIMIT_MAX = 8189
"""Most results one query returns."""

U128_MAX = (1 << 128) - 1
U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1
U16_MAX = (1 << 16) - 1
AMOUNT_MAX = U128_MAX
"""A post with this amount posts the whole pending amount; a balancing transfer with it takes all."""
ID_INT_MAX = U128_MAX
"""Reserved: no account or transfer may have this id (nor 0)."""
NS_PER_SECOND = 1_000_000_000


class AccountFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1 << 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 2
    HISTORY = 1 << 3
    IMPORTED = 1 << 4
    CLOSED = 1 << 5


ACCOUNT_FLAGS_KNOWN = 0b11_1111


class TransferFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1 << 0
    PENDING = 1 << 1
    POST_PENDING_TRANSFER = 1 << 2
    VOID_PENDING_TRANSFER = 1 << 3
    BALANCING_DEBIT = 1 << 4
    BALANCING_CREDIT = 1 << 5
    CLOSING_DEBIT = 1 << 6
    CLOSING_CREDIT = 1 << 7
    IMPORTED = 1 << 8


TRANSFER_FLAGS_KNOWN = 0b1_1111_1111


class AccountFilterFlags(enum.IntFlag):
    NONE = 0
    DEBITS = 1 << 0
    CREDITS = 1 << 1
    REVERSED = 1 << 2


class QueryFilterFlags(enum.IntFlag):
    NONE = 0
    REVERSED = 1 << 0


class CreateAccountStatus(enum.IntEnum):
    """Declared in TigerBeetle's precedence order: the first that applies is the one returned."""

    CREATED = 0xFFFFFFFF
    LINKED_EVENT_FAILED = 1
    LINKED_EVENT_CHAIN_OPEN = 2
    IMPORTED_EVENT_EXPECTED = 22
    IMPORTED_EVENT_NOT_EXPECTED = 23
    TIMESTAMP_MUST_BE_ZERO = 3
    IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE = 24
    IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE = 25
    RESERVED_FIELD = 4
    RESERVED_FLAG = 5
    ID_MUST_NOT_BE_ZERO = 6
    ID_MUST_NOT_BE_INT_MAX = 7
    EXISTS_WITH_DIFFERENT_FLAGS = 15
    EXISTS_WITH_DIFFERENT_USER_DATA_128 = 16
    EXISTS_WITH_DIFFERENT_USER_DATA_64 = 17
    EXISTS_WITH_DIFFERENT_USER_DATA_32 = 18
    EXISTS_WITH_DIFFERENT_LEDGER = 19
    EXISTS_WITH_DIFFERENT_CODE = 20
    EXISTS = 21
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 8
    DEBITS_PENDING_MUST_BE_ZERO = 9
    DEBITS_POSTED_MUST_BE_ZERO = 10
    CREDITS_PENDING_MUST_BE_ZERO = 11
    CREDITS_POSTED_MUST_BE_ZERO = 12
    LEDGER_MUST_NOT_BE_ZERO = 13
    CODE_MUST_NOT_BE_ZERO = 14
    IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS = 26


class CreateTransferStatus(enum.IntEnum):
    """Declared in TigerBeetle's precedence order: the first that applies is the one returned."""

    CREATED = 0xFFFFFFFF
    LINKED_EVENT_FAILED = 1
    LINKED_EVENT_CHAIN_OPEN = 2
    IMPORTED_EVENT_EXPECTED = 56
    IMPORTED_EVENT_NOT_EXPECTED = 57
    TIMESTAMP_MUST_BE_ZERO = 3
    IMPORTED_EVENT_TIMESTAMP_OUT_OF_RANGE = 58
    IMPORTED_EVENT_TIMESTAMP_MUST_NOT_ADVANCE = 59
    RESERVED_FLAG = 4
    ID_MUST_NOT_BE_ZERO = 5
    ID_MUST_NOT_BE_INT_MAX = 6
    EXISTS_WITH_DIFFERENT_FLAGS = 36
    EXISTS_WITH_DIFFERENT_PENDING_ID = 40
    EXISTS_WITH_DIFFERENT_TIMEOUT = 44
    EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID = 37
    EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID = 38
    EXISTS_WITH_DIFFERENT_AMOUNT = 39
    EXISTS_WITH_DIFFERENT_USER_DATA_128 = 41
    EXISTS_WITH_DIFFERENT_USER_DATA_64 = 42
    EXISTS_WITH_DIFFERENT_USER_DATA_32 = 43
    EXISTS_WITH_DIFFERENT_LEDGER = 67
    EXISTS_WITH_DIFFERENT_CODE = 45
    EXISTS = 46
    ID_ALREADY_FAILED = 68
    FLAGS_ARE_MUTUALLY_EXCLUSIVE = 7
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 8
    DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 9
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO = 10
    CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX = 11
    ACCOUNTS_MUST_BE_DIFFERENT = 12
    PENDING_ID_MUST_BE_ZERO = 13
    PENDING_ID_MUST_NOT_BE_ZERO = 14
    PENDING_ID_MUST_NOT_BE_INT_MAX = 15
    PENDING_ID_MUST_BE_DIFFERENT = 16
    TIMEOUT_RESERVED_FOR_PENDING_TRANSFER = 17
    CLOSING_TRANSFER_MUST_BE_PENDING = 64
    LEDGER_MUST_NOT_BE_ZERO = 19
    CODE_MUST_NOT_BE_ZERO = 20
    DEBIT_ACCOUNT_NOT_FOUND = 21
    CREDIT_ACCOUNT_NOT_FOUND = 22
    ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER = 23
    TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS = 24
    PENDING_TRANSFER_NOT_FOUND = 25
    PENDING_TRANSFER_NOT_PENDING = 26
    PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID = 27
    PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID = 28
    PENDING_TRANSFER_HAS_DIFFERENT_LEDGER = 29
    PENDING_TRANSFER_HAS_DIFFERENT_CODE = 30
    EXCEEDS_PENDING_TRANSFER_AMOUNT = 31
    PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT = 32
    PENDING_TRANSFER_ALREADY_POSTED = 33
    PENDING_TRANSFER_ALREADY_VOIDED = 34
    PENDING_TRANSFER_EXPIRED = 35
    IMPORTED_EVENT_TIMESTAMP_MUST_NOT_REGRESS = 60
    IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_DEBIT_ACCOUNT = 61
    IMPORTED_EVENT_TIMESTAMP_MUST_POSTDATE_CREDIT_ACCOUNT = 62
    IMPORTED_EVENT_TIMEOUT_MUST_BE_ZERO = 63
    DEBIT_ACCOUNT_ALREADY_CLOSED = 65
    CREDIT_ACCOUNT_ALREADY_CLOSED = 66
    OVERFLOWS_DEBITS_PENDING = 47
    OVERFLOWS_CREDITS_PENDING = 48
    OVERFLOWS_DEBITS_POSTED = 49
    OVERFLOWS_CREDITS_POSTED = 50
    OVERFLOWS_DEBITS = 51
    OVERFLOWS_CREDITS = 52
    OVERFLOWS_TIMEOUT = 53
    EXCEEDS_CREDITS = 54
    EXCEEDS_DEBITS = 55


# Failures that depend on state which may change later (an account may be created, a balance may
# grow). TigerBeetle remembers the transfer id so a retry cannot succeed later with a different
# outcome than the first attempt: any later transfer with that id gets ID_ALREADY_FAILED.
TRANSFER_STATUSES_TRANSIENT = frozenset(
    {
        CreateTransferStatus.DEBIT_ACCOUNT_NOT_FOUND,
        CreateTransferStatus.CREDIT_ACCOUNT_NOT_FOUND,
        CreateTransferStatus.PENDING_TRANSFER_NOT_FOUND,
        CreateTransferStatus.EXCEEDS_CREDITS,
        CreateTransferStatus.EXCEEDS_DEBITS,
        CreateTransferStatus.DEBIT_ACCOUNT_ALREADY_CLOSED,
        CreateTransferStatus.CREDIT_ACCOUNT_ALREADY_CLOSED,
    }
)


@dataclass(slots=True)
class Account:
    id: int = 0
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    ledger: int = 0
    code: int = 0
    flags: int = AccountFlags.NONE
    timestamp: int = 0
    # TigerBeetle's u32 `reserved` (must be zero). The official Python client has no such field and
    # always sends zero, so only the embedded engine can be asked about RESERVED_FIELD.
    reserved: int = 0


@dataclass(slots=True)
class Transfer:
    id: int = 0
    debit_account_id: int = 0
    credit_account_id: int = 0
    amount: int = 0
    pending_id: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    timeout: int = 0
    ledger: int = 0
    code: int = 0
    flags: int = TransferFlags.NONE
    timestamp: int = 0


@dataclass(slots=True, frozen=True)
class CreateAccountResult:
    timestamp: int
    status: CreateAccountStatus


@dataclass(slots=True, frozen=True)
class CreateTransferResult:
    timestamp: int
    status: CreateTransferStatus


@dataclass(slots=True, frozen=True)
class AccountBalance:
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    timestamp: int


@dataclass(slots=True, frozen=True)
class AccountFilter:
    account_id: int
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    code: int = 0
    timestamp_min: int = 0
    timestamp_max: int = 0
    limit: int = QUERY_LIMIT_MAX
    flags: int = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS


@dataclass(slots=True, frozen=True)
class QueryFilter:
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    ledger: int = 0
    code: int = 0
    timestamp_min: int = 0
    timestamp_max: int = 0
    limit: int = QUERY_LIMIT_MAX
    flags: int = QueryFilterFlags.NONE


class ChangeEventType(enum.IntEnum):
    """TigerBeetle's change event types (the `tigerbeetle amqp` CDC job publishes the same)."""

    SINGLE_PHASE = 0
    TWO_PHASE_PENDING = 1
    TWO_PHASE_POSTED = 2
    TWO_PHASE_VOIDED = 3
    TWO_PHASE_EXPIRED = 4


@dataclass(slots=True, frozen=True)
class ChangeEventsFilter:
    timestamp_min: int = 0
    timestamp_max: int = 0
    limit: int = QUERY_LIMIT_MAX


@dataclass(slots=True, frozen=True)
class ChangeEvent:
    """One committed change, in commit order.

    `timestamp` is the change's own engine timestamp: the transfer's for single-phase, pending, post and
    void events; the expiry's for TWO_PHASE_EXPIRED (whose `transfer` is the expired pending transfer).
    The account snapshots carry balances as of the change. Both backends fill them (the TigerBeetle one
    from TigerBeetle's own `get_change_events`, expiries included); None only from a backend that
    cannot tell.
    """

    timestamp: int
    type: ChangeEventType
    transfer: Transfer
    debit_account: Account | None = None
    credit_account: Account | None = None


ACCOUNT_FIELD_BITS: dict[str, int] = {
    "id": 128,
    "debits_pending": 128,
    "debits_posted": 128,
    "credits_pending": 128,
    "credits_posted": 128,
    "user_data_128": 128,
    "user_data_64": 64,
    "user_data_32": 32,
    "reserved": 32,
    "ledger": 32,
    "code": 16,
    "flags": 16,
    "timestamp": 64,
}

TRANSFER_FIELD_BITS: dict[str, int] = {
    "id": 128,
    "debit_account_id": 128,
    "credit_account_id": 128,
    "amount": 128,
    "pending_id": 128,
    "user_data_128": 128,
    "user_data_64": 64,
    "user_data_32": 32,
    "timeout": 32,
    "ledger": 32,
    "code": 16,
    "flags": 16,
    "timestamp": 64,
}


class FieldRangeError(ValueError):
    """A field holds a value its TigerBeetle width cannot: the request cannot be encoded at all."""


class TooMuchDataError(FieldRangeError):
    """More than one request or reply holds: a batch above BATCH_EVENTS_MAX events, or a query `limit`
    above QUERY_LIMIT_MAX. The official client raises its own `TooMuchDataError` before sending
    (tb_client context.zig: `event_count > event_max` or `result_count_expected > result_max`); both
    backends raise this one, and nothing is written. A FieldRangeError, so existing handlers of
    unencodable requests keep catching it."""


def _check_widths(obj: object, widths: dict[str, int], kind: str, index: int) -> None:
    for name, bits in widths.items():
        value = getattr(obj, name)
        if not isinstance(value, int) or value < 0 or value >> bits:
            raise FieldRangeError(f"{kind}[{index}].{name}={value!r} is not a u{bits}")


def validate_accounts(accounts: list[Account]) -> None:
    if len(accounts) > BATCH_EVENTS_MAX:
        raise TooMuchDataError(f"{len(accounts)} accounts exceed batch_events_max={BATCH_EVENTS_MAX}")
    for index, account in enumerate(accounts):
        _check_widths(account, ACCOUNT_FIELD_BITS, "accounts", index)


def validate_transfers(transfers: list[Transfer]) -> None:
    if len(transfers) > BATCH_EVENTS_MAX:
        raise TooMuchDataError(f"{len(transfers)} transfers exceed batch_events_max={BATCH_EVENTS_MAX}")
    for index, transfer in enumerate(transfers):
        _check_widths(transfer, TRANSFER_FIELD_BITS, "transfers", index)


def validate_ids(ids: list[int]) -> None:
    if len(ids) > BATCH_EVENTS_MAX:
        raise TooMuchDataError(f"{len(ids)} ids exceed batch_events_max={BATCH_EVENTS_MAX}")
    for index, value in enumerate(ids):
        if not isinstance(value, int) or value < 0 or value >> 128:
            raise FieldRangeError(f"ids[{index}]={value!r} is not a u128")
