"""Domain → engine: the one place where transactions become TigerBeetle transfers.

Ledgers and accounts
- One engine ledger per currency (`ledger` in the currency table; ISO 4217 numeric by default).
- Each currency has a settlement account (code SETTLEMENT), the other side of every CREDIT (money in)
  and DEBIT (money out). Customer accounts have code CUSTOMER and the `history` flag; NO_OVERDRAFT
  accounts add `debits_must_not_exceed_credits`, so the engine itself refuses to overdraw them.
- Account ids are derived from (client, external reference): creating an account is idempotent.

Transfers
- A transaction's legs become linked transfers (all but the last carry `linked`): all or nothing.
- Transfer id = H(client, idempotency key, leg index), so a retry is an exact duplicate the engine
  answers with `exists`, and two clients can never collide. H is BLAKE2b-128, never 0 or 2^128-1.
- code = the transaction type (CREDIT 1, DEBIT 2, TRANSFER 3). Captures and voids leave it zero: the
  engine copies the authorization's code, and the post/void flag tells them apart.
- user_data_128 = the transaction id (groups the legs; = H(client, idempotency key)).
- user_data_64 = the business time the caller gave (`occurred_at_ns`), 0 if none.
- user_data_32 = CRC-32 of `source`, so engine queries can filter by source.
- Everything else (source, correlation id, description, labels, idempotency key, client) does not fit
  the engine: the metadata store keeps it durably before the transfers are submitted.
- Two-phase: authorize = pending transfers (optionally with a timeout); capture = post transfers
  (AMOUNT_MAX = the full amount); void = void transfers. Each references its pending leg.

Idempotency: the request fingerprint (SHA-256 of the canonical payload) is stored with the key. The
same key with a different fingerprint is IDEMPOTENCY_KEY_REUSED, before anything reaches the engine.
"""

from __future__ import annotations

import enum
import hashlib
import json
import zlib
from dataclasses import dataclass, field

import grpc

from facade.engine.types import (
    AMOUNT_MAX,
    U128_MAX,
    AccountFlags,
    CreateTransferStatus,
    Transfer,
    TransferFlags,
)
from facade.settings import CurrencySettings

LEGS_MAX = 16
IDEMPOTENCY_KEY_LENGTH_MAX = 128
SOURCE_LENGTH_MAX = 64
CORRELATION_ID_LENGTH_MAX = 128
DESCRIPTION_LENGTH_MAX = 512
LABELS_COUNT_MAX = 16
LABEL_LENGTH_MAX = 128
EXTERNAL_REFERENCE_LENGTH_MAX = 128
OWNER_LENGTH_MAX = 128

ACCOUNT_CODE_CUSTOMER = 1
ACCOUNT_CODE_SETTLEMENT = 100
ERROR_DOMAIN = "ledger.v1"


class TransactionType(enum.IntEnum):
    """The transfer `code`: why money moved."""

    CREDIT = 1
    DEBIT = 2
    TRANSFER = 3
    CAPTURE = 4
    VOID = 5


class DomainError(Exception):
    """A request the ledger refuses: a gRPC status plus a machine-readable reason."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = metadata or {}


def invalid(reason: str, message: str, **metadata: str) -> DomainError:
    return DomainError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, metadata)


# ------------------------------------------------------------------------------------------------
# Ids.


def _id128(*parts: str) -> int:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).digest()
    value = int.from_bytes(digest, "big")
    # 0 and 2^128-1 are reserved by the engine; the chance is 2^-127, but the rule is absolute.
    return 1 if value in (0, U128_MAX) else value


def transaction_id(client_id: str, idempotency_key: str) -> int:
    return _id128("transaction", client_id, idempotency_key)


def transfer_id(client_id: str, idempotency_key: str, leg_index: int) -> int:
    return _id128("transfer", client_id, idempotency_key, str(leg_index))


def account_id(client_id: str, external_reference: str) -> int:
    return _id128("account", client_id, external_reference)


def settlement_account_id(currency: str) -> int:
    return _id128("settlement", currency)


def format_id(value: int) -> str:
    return str(value)


def parse_id(text: str, field_name: str) -> int:
    if not text.isdigit():
        raise invalid("INVALID_ID", f"{field_name} must be a decimal u128", field=field_name)
    value = int(text)
    if not 0 < value < U128_MAX:
        raise invalid("INVALID_ID", f"{field_name} is out of range", field=field_name)
    return value


def parse_amount(text: str, field_name: str = "amount") -> int:
    """Minor units: a decimal integer string, 1 .. 2^128-2 (2^128-1 is the engine's 'everything')."""
    if not text or not text.isascii() or not text.isdigit() or len(text) > 39:
        raise invalid("INVALID_AMOUNT", f"{field_name} must be a positive integer of minor units", field=field_name)
    value = int(text)
    if not 0 < value < AMOUNT_MAX:
        raise invalid("INVALID_AMOUNT", f"{field_name} must be between 1 and 2^128-2", field=field_name)
    return value


# ------------------------------------------------------------------------------------------------
# Currencies and accounts.


@dataclass(frozen=True, slots=True)
class Currencies:
    by_code: dict[str, CurrencySettings]

    def get(self, code: str) -> CurrencySettings:
        currency = self.by_code.get(code)
        if currency is None:
            raise invalid("UNKNOWN_CURRENCY", f"currency {code!r} is not configured", currency=code)
        return currency

    def code_of_ledger(self, ledger: int) -> str:
        for code, currency in self.by_code.items():
            if currency.ledger == ledger:
                return code
        return ""


def customer_account_flags(no_overdraft: bool) -> int:
    flags = AccountFlags.HISTORY
    if no_overdraft:
        flags |= AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    return int(flags)


def validate_map(values: dict[str, str], name: str) -> None:
    if len(values) > LABELS_COUNT_MAX:
        raise invalid("TOO_MANY_LABELS", f"{name}: at most {LABELS_COUNT_MAX} entries", field=name)
    for key, value in values.items():
        if len(key.encode()) > LABEL_LENGTH_MAX or len(value.encode()) > LABEL_LENGTH_MAX:
            raise invalid("LABEL_TOO_LONG", f"{name}: keys and values at most {LABEL_LENGTH_MAX} bytes", field=name)


def validate_text(value: str, name: str, length_max: int, required: bool = False) -> None:
    if required and not value:
        raise invalid("MISSING_FIELD", f"{name} is required", field=name)
    if len(value.encode()) > length_max:
        raise invalid("FIELD_TOO_LONG", f"{name}: at most {length_max} bytes", field=name)


# ------------------------------------------------------------------------------------------------
# Transactions.


@dataclass(frozen=True, slots=True)
class LegSpec:
    """A validated leg: who is debited, who is credited, how much."""

    type: TransactionType
    debit_account_id: int
    credit_account_id: int
    amount: int


@dataclass(frozen=True, slots=True)
class Metadata:
    source: str = ""
    correlation_id: str = ""
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    occurred_at_ns: int = 0

    def validate(self) -> None:
        validate_text(self.source, "metadata.source", SOURCE_LENGTH_MAX)
        validate_text(self.correlation_id, "metadata.correlation_id", CORRELATION_ID_LENGTH_MAX)
        validate_text(self.description, "metadata.description", DESCRIPTION_LENGTH_MAX)
        validate_map(self.labels, "metadata.labels")
        if not 0 <= self.occurred_at_ns < 1 << 64:
            raise invalid("INVALID_TIMESTAMP", "metadata.occurred_at_ns out of range")

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "correlation_id": self.correlation_id,
            "description": self.description,
            "labels": dict(sorted(self.labels.items())),
            "occurred_at_ns": self.occurred_at_ns,
        }


class Kind(enum.StrEnum):
    POST = "post"
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    VOID = "void"


@dataclass(frozen=True, slots=True)
class MappedTransaction:
    """A validated domain transaction and the exact transfers that carry it."""

    client_id: str
    idempotency_key: str
    transaction_id: int
    kind: Kind
    currency: str
    legs: tuple[LegSpec, ...]
    metadata: Metadata
    fingerprint: str
    transfers: tuple[Transfer, ...]
    authorization_id: int = 0


def fingerprint(payload: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def source_code(source: str) -> int:
    return zlib.crc32(source.encode()) & 0xFFFFFFFF


def _transfers(
    client_id: str,
    key: str,
    tx_id: int,
    ledger: int,
    legs: tuple[LegSpec, ...],
    metadata: Metadata,
    flags: int,
    timeout: int = 0,
) -> tuple[Transfer, ...]:
    transfers = []
    for index, leg in enumerate(legs):
        linked = TransferFlags.LINKED if index < len(legs) - 1 else 0
        transfers.append(
            Transfer(
                id=transfer_id(client_id, key, index),
                debit_account_id=leg.debit_account_id,
                credit_account_id=leg.credit_account_id,
                amount=leg.amount,
                user_data_128=tx_id,
                user_data_64=metadata.occurred_at_ns,
                user_data_32=source_code(metadata.source),
                timeout=timeout,
                ledger=ledger,
                code=int(leg.type),
                flags=int(flags | linked),
            )
        )
    return tuple(transfers)


def map_post(
    client_id: str,
    idempotency_key: str,
    legs: list[tuple[int, str, str, str, str, str]],
    metadata: Metadata,
    currencies: Currencies,
    authorize_only: bool = False,
    timeout_seconds: int = 0,
) -> MappedTransaction:
    """legs: (type, account_id, from_account_id, to_account_id, amount, currency) as received."""
    validate_text(idempotency_key, "idempotency_key", IDEMPOTENCY_KEY_LENGTH_MAX, required=True)
    metadata.validate()
    if not 1 <= len(legs) <= LEGS_MAX:
        raise invalid("INVALID_LEGS", f"a transaction has 1 to {LEGS_MAX} legs")
    currency_codes = {leg[5] for leg in legs}
    if len(currency_codes) != 1:
        raise invalid("CURRENCY_MISMATCH", "all legs of a transaction must use one currency")
    [currency_code] = currency_codes
    currency = currencies.get(currency_code)
    settlement = settlement_account_id(currency_code)
    specs = []
    for index, (leg_type, account, source, destination, amount_text, _) in enumerate(legs):
        amount = parse_amount(amount_text, f"legs[{index}].amount")
        if leg_type == TransactionType.CREDIT:
            specs.append(
                LegSpec(TransactionType.CREDIT, settlement, parse_id(account, f"legs[{index}].account_id"), amount)
            )
        elif leg_type == TransactionType.DEBIT:
            specs.append(
                LegSpec(TransactionType.DEBIT, parse_id(account, f"legs[{index}].account_id"), settlement, amount)
            )
        elif leg_type == TransactionType.TRANSFER:
            debit = parse_id(source, f"legs[{index}].from_account_id")
            credit = parse_id(destination, f"legs[{index}].to_account_id")
            if debit == credit:
                raise invalid("SAME_ACCOUNT", f"legs[{index}]: from and to accounts are the same")
            specs.append(LegSpec(TransactionType.TRANSFER, debit, credit, amount))
        else:
            raise invalid("INVALID_LEG_TYPE", f"legs[{index}].type must be CREDIT, DEBIT or TRANSFER")
    if not authorize_only and timeout_seconds:
        raise invalid("TIMEOUT_WITHOUT_AUTHORIZATION", "authorization_timeout_seconds needs authorize_only")
    kind = Kind.AUTHORIZE if authorize_only else Kind.POST
    legs_tuple = tuple(specs)
    tx_id = transaction_id(client_id, idempotency_key)
    payload: dict[str, object] = {
        "kind": str(kind),
        "currency": currency_code,
        "legs": [[int(s.type), str(s.debit_account_id), str(s.credit_account_id), str(s.amount)] for s in specs],
        "metadata": metadata.as_dict(),
        "timeout": timeout_seconds,
    }
    flags = TransferFlags.PENDING if authorize_only else 0
    return MappedTransaction(
        client_id=client_id,
        idempotency_key=idempotency_key,
        transaction_id=tx_id,
        kind=kind,
        currency=currency_code,
        legs=legs_tuple,
        metadata=metadata,
        fingerprint=fingerprint(payload),
        transfers=_transfers(
            client_id, idempotency_key, tx_id, currency.ledger, legs_tuple, metadata, flags, timeout_seconds
        ),
    )


def map_resolution(
    client_id: str,
    idempotency_key: str,
    authorization: MappedTransaction,
    capture: bool,
    amount_text: str,
    metadata: Metadata,
) -> MappedTransaction:
    """A capture (post) or void of an authorization: one resolving transfer per authorized leg."""
    validate_text(idempotency_key, "idempotency_key", IDEMPOTENCY_KEY_LENGTH_MAX, required=True)
    metadata.validate()
    if authorization.kind != Kind.AUTHORIZE:
        raise DomainError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_AN_AUTHORIZATION",
            "the transaction is not an authorization",
        )
    amount = AMOUNT_MAX
    if amount_text:
        if not capture:
            raise invalid("AMOUNT_NOT_ALLOWED", "a void releases the whole authorization; amount must be empty")
        if len(authorization.legs) != 1:
            raise invalid("PARTIAL_CAPTURE_NEEDS_ONE_LEG", "partial capture is for single-leg authorizations")
        amount = parse_amount(amount_text)
    kind = Kind.CAPTURE if capture else Kind.VOID
    leg_type = TransactionType.CAPTURE if capture else TransactionType.VOID
    tx_id = transaction_id(client_id, idempotency_key)
    flags = TransferFlags.POST_PENDING_TRANSFER if capture else TransferFlags.VOID_PENDING_TRANSFER
    legs = tuple(
        LegSpec(
            leg_type,
            leg.debit_account_id,
            leg.credit_account_id,
            amount if amount != AMOUNT_MAX else leg.amount,
        )
        for leg in authorization.legs
    )
    transfers = []
    for index, pending in enumerate(authorization.transfers):
        linked = TransferFlags.LINKED if index < len(authorization.transfers) - 1 else 0
        transfers.append(
            Transfer(
                id=transfer_id(client_id, idempotency_key, index),
                pending_id=pending.id,
                amount=amount if capture else 0,
                user_data_128=tx_id,
                user_data_64=metadata.occurred_at_ns,
                user_data_32=source_code(metadata.source),
                ledger=pending.ledger,
                code=0,  # Inherited from the pending transfer (TigerBeetle requires 0 or equal).
                flags=int(flags | linked),
            )
        )
    payload: dict[str, object] = {
        "kind": str(kind),
        "authorization": str(authorization.transaction_id),
        "amount": amount_text,
        "metadata": metadata.as_dict(),
    }
    return MappedTransaction(
        client_id=client_id,
        idempotency_key=idempotency_key,
        transaction_id=tx_id,
        kind=kind,
        currency=authorization.currency,
        legs=legs,
        metadata=metadata,
        fingerprint=fingerprint(payload),
        transfers=tuple(transfers),
        authorization_id=authorization.transaction_id,
    )


# ------------------------------------------------------------------------------------------------
# Engine results → gRPC statuses.

_C = grpc.StatusCode
_S = CreateTransferStatus

# Every CreateTransferStatus a transaction can fail with, and what the client is told. Statuses the
# mapping above makes impossible (zero ids, reserved flags, ...) would mean a bug here: INTERNAL.
TRANSFER_STATUS_ERRORS: dict[CreateTransferStatus, tuple[grpc.StatusCode, str]] = {
    _S.EXCEEDS_CREDITS: (_C.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS"),
    _S.EXCEEDS_DEBITS: (_C.FAILED_PRECONDITION, "CREDIT_LIMIT_EXCEEDED"),
    _S.DEBIT_ACCOUNT_NOT_FOUND: (_C.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
    _S.CREDIT_ACCOUNT_NOT_FOUND: (_C.NOT_FOUND, "ACCOUNT_NOT_FOUND"),
    _S.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER: (_C.FAILED_PRECONDITION, "CURRENCY_MISMATCH"),
    _S.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS: (_C.FAILED_PRECONDITION, "CURRENCY_MISMATCH"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER: (_C.FAILED_PRECONDITION, "CURRENCY_MISMATCH"),
    _S.ACCOUNTS_MUST_BE_DIFFERENT: (_C.INVALID_ARGUMENT, "SAME_ACCOUNT"),
    _S.DEBIT_ACCOUNT_ALREADY_CLOSED: (_C.FAILED_PRECONDITION, "ACCOUNT_CLOSED"),
    _S.CREDIT_ACCOUNT_ALREADY_CLOSED: (_C.FAILED_PRECONDITION, "ACCOUNT_CLOSED"),
    _S.PENDING_TRANSFER_NOT_FOUND: (_C.NOT_FOUND, "AUTHORIZATION_NOT_FOUND"),
    _S.PENDING_TRANSFER_NOT_PENDING: (_C.FAILED_PRECONDITION, "NOT_AN_AUTHORIZATION"),
    _S.PENDING_TRANSFER_EXPIRED: (_C.FAILED_PRECONDITION, "AUTHORIZATION_EXPIRED"),
    _S.PENDING_TRANSFER_ALREADY_POSTED: (_C.FAILED_PRECONDITION, "AUTHORIZATION_ALREADY_CAPTURED"),
    _S.PENDING_TRANSFER_ALREADY_VOIDED: (_C.FAILED_PRECONDITION, "AUTHORIZATION_ALREADY_VOIDED"),
    _S.EXCEEDS_PENDING_TRANSFER_AMOUNT: (_C.INVALID_ARGUMENT, "CAPTURE_EXCEEDS_AUTHORIZATION"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT: (_C.INVALID_ARGUMENT, "VOID_AMOUNT_MISMATCH"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID: (_C.INVALID_ARGUMENT, "AUTHORIZATION_MISMATCH"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID: (_C.INVALID_ARGUMENT, "AUTHORIZATION_MISMATCH"),
    _S.PENDING_TRANSFER_HAS_DIFFERENT_CODE: (_C.INVALID_ARGUMENT, "AUTHORIZATION_MISMATCH"),
    _S.OVERFLOWS_DEBITS_PENDING: (_C.FAILED_PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_CREDITS_PENDING: (_C.FAILED_PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_DEBITS_POSTED: (_C.FAILED_PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_CREDITS_POSTED: (_C.FAILED_PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_DEBITS: (_C.FAILED_PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_CREDITS: (_C.FAILED_PRECONDITION, "BALANCE_OVERFLOW"),
    _S.OVERFLOWS_TIMEOUT: (_C.INVALID_ARGUMENT, "AUTHORIZATION_TIMEOUT_TOO_LONG"),
    _S.ID_ALREADY_FAILED: (_C.ALREADY_EXISTS, "IDEMPOTENCY_KEY_FAILED"),
    **{
        status: (_C.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
        for status in _S
        if status.name.startswith("EXISTS_WITH_DIFFERENT_")
    },
}


def transfer_status_error(status: CreateTransferStatus, leg_index: int) -> DomainError:
    code, reason = TRANSFER_STATUS_ERRORS.get(status, (_C.INTERNAL, "INTERNAL_MAPPING_ERROR"))
    return DomainError(
        code,
        reason,
        f"leg {leg_index}: {status.name.lower()}",
        {"leg": str(leg_index), "engine_status": status.name},
    )
