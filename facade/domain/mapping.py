"""Domain → engine: the one place where transactions become TigerBeetle transfers.

Ledgers and accounts
- One engine ledger per currency (`ledger` in the currency table; ISO 4217 numeric by default).
- Each currency has a settlement account (code SETTLEMENT), the other side of every CREDIT (money in)
  and DEBIT (money out). Customer accounts have code CUSTOMER and the `history` flag; NO_OVERDRAFT
  accounts add `debits_must_not_exceed_credits`, so the engine itself refuses to overdraw them.
- Account ids are derived from (client, external reference): creating an account is idempotent.
- A customer account's user_data_128 = H(owning client): the owner lives in the engine, immutable like
  the account, so every façade on the cluster (and a façade that lost its metadata store) sees it.
  The write path's ownership check reads it from there (facade.service). Accounts created before the
  owner was carried have user_data_128 = 0: nobody's but an admin's, unless the local metadata store
  knows their owner.

Ids: BLAKE2b-128 with a per-kind personalisation over length-prefixed parts, so no two different
inputs (client "a", key "bc" versus client "ab", key "c") can share an id; never 0 or 2^128-1.
- transaction id = H(client, idempotency key); transfer id = H(client, idempotency key, leg index).
  A retry is therefore an exact duplicate the engine answers with `exists`, and two clients never
  collide.

Engine fields of each transfer
- code = the transaction type (CREDIT 1, DEBIT 2, TRANSFER 3). Captures and voids leave it zero: the
  engine copies the authorization's code, and the post/void flag tells them apart.
- user_data_128 = the transaction id (groups the legs; = H(client, idempotency key)).
- user_data_64 = the business time the caller gave (`occurred_at_ns`), 0 if none.
- user_data_32 = CRC-32 of `source`, so engine queries can filter by source.
- The correlation id, description, labels, idempotency key and client do not fit the engine: the
  metadata store keeps them durably (the canonical `body` below) before the transfers are submitted.
- Two-phase: authorize = pending transfers (optionally with a timeout); capture = post transfers
  (AMOUNT_MAX = the full amount); void = void transfers. Each references its pending leg.

Canonical body and idempotency: every transaction has a canonical JSON `body` holding its whole
payload (kind, currency, ledger, timeout, legs, metadata, the authorization it resolves). The
transfers are a pure function of (client, key, body), so the store keeps the body only, and
`decode_transaction` rebuilds exactly the transfers that were submitted. The fingerprint is
BLAKE2b-128 of the body: the same key with a different fingerprint is IDEMPOTENCY_KEY_REUSED.
Decimal inputs must be canonical (no sign, no leading zeros) so one payload has one body.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from facade.domain.errors import ErrorKind, LedgerError, invalid
from facade.engine.types import (
    AMOUNT_MAX,
    U128_MAX,
    AccountFlags,
    Transfer,
    TransferFlags,
)
from facade.settings import CurrencySettings

# The errors moved to facade.domain.errors (no transport there); these names stay importable from here.
DomainError = LedgerError

LEGS_MAX = 16
IDEMPOTENCY_KEY_LENGTH_MAX = 128
SOURCE_LENGTH_MAX = 64
CORRELATION_ID_LENGTH_MAX = 128
DESCRIPTION_LENGTH_MAX = 512
LABELS_COUNT_MAX = 16
LABEL_LENGTH_MAX = 128
EXTERNAL_REFERENCE_LENGTH_MAX = 128
OWNER_LENGTH_MAX = 128
DECIMAL_U128_DIGITS_MAX = 39
BODY_VERSION = 1

ACCOUNT_CODE_CUSTOMER = 1
ACCOUNT_CODE_SETTLEMENT = 100
ACCOUNT_CODE_INSTANCE_MARKER = 101
"""A façade's instance marker account (facade.consistency): user_data_128 = the instance id."""
INSTANCE_MARKER_LEDGER = 0xFFFF_FFFF
"""The markers' own ledger: no currency uses it, so no transfer can ever touch a marker."""


class TransactionType(enum.IntEnum):
    """The transfer `code`: why money moved."""

    CREDIT = 1
    DEBIT = 2
    TRANSFER = 3
    CAPTURE = 4
    VOID = 5


# ------------------------------------------------------------------------------------------------
# Ids.


def _id128(person: bytes, text: str) -> int:
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=16, person=person).digest(), "big")
    # 0 and 2^128-1 are reserved by the engine; the chance is 2^-127, but the rule is absolute.
    return 1 if value in (0, U128_MAX) else value


def transaction_id(client_id: str, idempotency_key: str) -> int:
    return _id128(b"ledger.tx", f"{len(client_id)}:{client_id}{idempotency_key}")


def transfer_id(client_id: str, idempotency_key: str, leg_index: int) -> int:
    key = f"{len(client_id)}:{client_id}{len(idempotency_key)}:{idempotency_key}"
    return _id128(b"ledger.transfer", f"{key}{leg_index}")


def account_id(client_id: str, external_reference: str) -> int:
    return _id128(b"ledger.account", f"{len(client_id)}:{client_id}{external_reference}")


def account_owner(client_id: str) -> int:
    """The owner hash kept in a customer account's user_data_128 (never 0: 0 means "owner unknown")."""
    return _id128(b"ledger.owner", f"{len(client_id)}:{client_id}")


def instance_marker_id(instance_name: str) -> int:
    """The fixed id of a façade's instance marker account in the engine."""
    return _id128(b"ledger.instance", instance_name)


@functools.cache
def settlement_account_id(currency: str) -> int:
    return _id128(b"ledger.settle", currency)


def format_id(value: int) -> str:
    return str(value)


def _canonical_decimal(text: str) -> bool:
    """ASCII digits only, no sign, no leading zero (except "0" itself), at most 39 digits."""
    return (
        0 < len(text) <= DECIMAL_U128_DIGITS_MAX
        and text.isascii()
        and text.isdigit()
        and (text[0] != "0" or len(text) == 1)
    )


def parse_id(text: str, field_name: str) -> int:
    if not _canonical_decimal(text):
        raise invalid("INVALID_ID", f"{field_name} must be a decimal u128 without leading zeros", field=field_name)
    value = int(text)
    if not 0 < value < U128_MAX:
        raise invalid("INVALID_ID", f"{field_name} is out of range", field=field_name)
    return value


def parse_amount(text: str, field_name: str = "amount") -> int:
    """Minor units: a canonical decimal integer string, 1 .. 2^128-2 (2^128-1 is the engine's 'everything')."""
    if not _canonical_decimal(text):
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
    # UTF-8 takes at most 4 bytes per code point: only long strings need encoding to be measured.
    if len(value) * 4 > length_max and len(value.encode()) > length_max:
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
        if self.labels:
            validate_map(self.labels, "metadata.labels")
        if not 0 <= self.occurred_at_ns < 1 << 64:
            raise invalid("INVALID_TIMESTAMP", "metadata.occurred_at_ns out of range")

    def canonical(self) -> list[object]:
        return [self.source, self.correlation_id, self.description, self.occurred_at_ns, sorted(self.labels.items())]

    @classmethod
    def from_canonical(cls, data: list[object]) -> Metadata:
        source, correlation_id, description, occurred_at_ns, labels = data
        assert isinstance(source, str) and isinstance(correlation_id, str) and isinstance(description, str)
        assert isinstance(occurred_at_ns, int) and isinstance(labels, list)
        return cls(source, correlation_id, description, {str(k): str(v) for k, v in labels}, occurred_at_ns)


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
    body: str
    """The canonical payload (see the module docstring); what the metadata store keeps."""
    fingerprint: bytes
    """BLAKE2b-128 of `body`."""
    transfers: tuple[Transfer, ...]
    authorization_id: int = 0


def fingerprint(payload: dict[str, object]) -> str:
    """A stable digest of a JSON-able payload (account attributes)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def source_code(source: str) -> int:
    return zlib.crc32(source.encode()) if source else 0


_FLAG_LINKED = int(TransferFlags.LINKED)
_FLAG_PENDING = int(TransferFlags.PENDING)
_FLAG_POST = int(TransferFlags.POST_PENDING_TRANSFER)
_FLAG_VOID = int(TransferFlags.VOID_PENDING_TRANSFER)
_json_string = json.encoder.encode_basestring_ascii


def _encode_body(
    kind: Kind,
    currency: str,
    ledger: int,
    timeout: int,
    legs: tuple[LegSpec, ...],
    metadata: Metadata,
    authorization_id: int,
    pending_ids: Sequence[int],
    resolve_amount: int,
) -> str:
    """json.dumps([...], separators=(",", ":")) of the body, byte for byte (a test holds it to that),
    written out because this runs once per transaction on the hot path."""
    s = _json_string
    labels = ",".join(f"[{s(k)},{s(v)}]" for k, v in sorted(metadata.labels.items())) if metadata.labels else ""
    return (
        f"[{BODY_VERSION},{s(kind.value)},{s(currency)},{ledger},{timeout},"
        f"[{','.join([f'[{x.type.value},{x.debit_account_id},{x.credit_account_id},{x.amount}]' for x in legs])}],"
        f"[{s(metadata.source)},{s(metadata.correlation_id)},{s(metadata.description)},{metadata.occurred_at_ns},"
        f"[{labels}]],{authorization_id},[{','.join(map(str, pending_ids))}],{resolve_amount}]"
    )


def _build(
    client_id: str,
    idempotency_key: str,
    tx_id: int,
    kind: Kind,
    currency: str,
    ledger: int,
    timeout: int,
    legs: tuple[LegSpec, ...],
    metadata: Metadata,
    authorization_id: int,
    pending_ids: Sequence[int],
    resolve_amount: int,
    body: str | None = None,
) -> MappedTransaction:
    """The one place transfers are made: both mapping and decoding a stored body come through here."""
    if body is None:
        body = _encode_body(
            kind, currency, ledger, timeout, legs, metadata, authorization_id, pending_ids, resolve_amount
        )
    user_data_64 = metadata.occurred_at_ns
    user_data_32 = source_code(metadata.source)
    last = len(legs) - 1
    transfers: list[Transfer] = []
    if kind is Kind.POST or kind is Kind.AUTHORIZE:
        assert not pending_ids and not authorization_id
        flags = _FLAG_PENDING if kind is Kind.AUTHORIZE else 0
        for index, leg in enumerate(legs):
            transfers.append(
                Transfer(
                    id=transfer_id(client_id, idempotency_key, index),
                    debit_account_id=leg.debit_account_id,
                    credit_account_id=leg.credit_account_id,
                    amount=leg.amount,
                    user_data_128=tx_id,
                    user_data_64=user_data_64,
                    user_data_32=user_data_32,
                    timeout=timeout,
                    ledger=ledger,
                    code=leg.type.value,
                    flags=flags | _FLAG_LINKED if index < last else flags,
                )
            )
    else:
        assert len(pending_ids) == len(legs) and authorization_id
        flags = _FLAG_POST if kind is Kind.CAPTURE else _FLAG_VOID
        for index, pending_id in enumerate(pending_ids):
            transfers.append(
                Transfer(
                    id=transfer_id(client_id, idempotency_key, index),
                    pending_id=pending_id,
                    amount=resolve_amount,
                    user_data_128=tx_id,
                    user_data_64=user_data_64,
                    user_data_32=user_data_32,
                    ledger=ledger,
                    code=0,  # Inherited from the pending transfer (TigerBeetle requires 0 or equal).
                    flags=flags | _FLAG_LINKED if index < last else flags,
                )
            )
    return MappedTransaction(
        client_id=client_id,
        idempotency_key=idempotency_key,
        transaction_id=tx_id,
        kind=kind,
        currency=currency,
        legs=legs,
        metadata=metadata,
        body=body,
        fingerprint=hashlib.blake2b(body.encode(), digest_size=16).digest(),
        transfers=tuple(transfers),
        authorization_id=authorization_id,
    )


def decode_transaction(client_id: str, idempotency_key: str, body: str) -> MappedTransaction:
    """Rebuilds a stored transaction, transfers included, exactly as it was mapped."""
    version, kind, currency, ledger, timeout, legs, metadata, authorization_id, pending_ids, resolve_amount = (
        json.loads(body)
    )
    assert version == BODY_VERSION, f"unknown body version {version}"
    return _build(
        client_id,
        idempotency_key,
        transaction_id(client_id, idempotency_key),
        Kind(kind),
        currency,
        ledger,
        timeout,
        tuple(LegSpec(TransactionType(t), d, c, a) for t, d, c, a in legs),
        Metadata.from_canonical(metadata),
        authorization_id,
        pending_ids,
        resolve_amount,
        body,
    )


class LegInput(Protocol):
    """A leg as an edge received it: a ledger.v1.Leg message satisfies this, as would a REST model."""

    @property
    def type(self) -> int: ...
    @property
    def account_id(self) -> str: ...
    @property
    def from_account_id(self) -> str: ...
    @property
    def to_account_id(self) -> str: ...
    @property
    def amount(self) -> str: ...
    @property
    def currency(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Leg:
    """A LegInput for edges without a message type of their own."""

    type: int
    account_id: str = ""
    from_account_id: str = ""
    to_account_id: str = ""
    amount: str = ""
    currency: str = ""


@dataclass(frozen=True, slots=True)
class BodySummary:
    transaction_type: str
    """credit | debit | transfer (the leg's type) for posts; authorize | capture | void otherwise."""
    currency: str
    metadata: Metadata


def parse_body_summary(body: str, leg_index: int) -> BodySummary:
    """What change capture needs from a stored body, without rebuilding the transfers."""
    data = json.loads(body)
    assert data[0] == BODY_VERSION, f"unknown body version {data[0]}"
    kind = Kind(data[1])
    transaction_type = TransactionType(data[5][leg_index][0]).name.lower() if kind is Kind.POST else str(kind)
    return BodySummary(transaction_type, data[2], Metadata.from_canonical(data[6]))


def map_post(
    client_id: str,
    idempotency_key: str,
    legs: Sequence[LegInput],
    metadata: Metadata,
    currencies: Currencies,
    authorize_only: bool = False,
    timeout_seconds: int = 0,
) -> MappedTransaction:
    validate_text(idempotency_key, "idempotency_key", IDEMPOTENCY_KEY_LENGTH_MAX, required=True)
    metadata.validate()
    if not 1 <= len(legs) <= LEGS_MAX:
        raise invalid("INVALID_LEGS", f"a transaction has 1 to {LEGS_MAX} legs")
    currency_code = legs[0].currency
    for leg in legs:
        if leg.currency != currency_code:
            raise invalid("CURRENCY_MISMATCH", "all legs of a transaction must use one currency")
    currency = currencies.get(currency_code)
    if not authorize_only and timeout_seconds:
        raise invalid("TIMEOUT_WITHOUT_AUTHORIZATION", "authorization_timeout_seconds needs authorize_only")
    specs: list[LegSpec] = []
    for index, leg in enumerate(legs):
        amount = parse_amount(leg.amount, f"legs[{index}].amount")
        leg_type = leg.type
        if leg_type == TransactionType.CREDIT:
            credit = parse_id(leg.account_id, f"legs[{index}].account_id")
            specs.append(LegSpec(TransactionType.CREDIT, settlement_account_id(currency_code), credit, amount))
        elif leg_type == TransactionType.DEBIT:
            debit = parse_id(leg.account_id, f"legs[{index}].account_id")
            specs.append(LegSpec(TransactionType.DEBIT, debit, settlement_account_id(currency_code), amount))
        elif leg_type == TransactionType.TRANSFER:
            debit = parse_id(leg.from_account_id, f"legs[{index}].from_account_id")
            credit = parse_id(leg.to_account_id, f"legs[{index}].to_account_id")
            if debit == credit:
                raise invalid("SAME_ACCOUNT", f"legs[{index}]: from and to accounts are the same")
            specs.append(LegSpec(TransactionType.TRANSFER, debit, credit, amount))
        else:
            raise invalid("INVALID_LEG_TYPE", f"legs[{index}].type must be CREDIT, DEBIT or TRANSFER")
    return _build(
        client_id,
        idempotency_key,
        transaction_id(client_id, idempotency_key),
        Kind.AUTHORIZE if authorize_only else Kind.POST,
        currency_code,
        currency.ledger,
        timeout_seconds,
        tuple(specs),
        metadata,
        0,
        (),
        0,
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
        raise LedgerError(
            ErrorKind.PRECONDITION,
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
    leg_type = TransactionType.CAPTURE if capture else TransactionType.VOID
    legs = tuple(
        LegSpec(leg_type, leg.debit_account_id, leg.credit_account_id, leg.amount if amount == AMOUNT_MAX else amount)
        for leg in authorization.legs
    )
    return _build(
        client_id,
        idempotency_key,
        transaction_id(client_id, idempotency_key),
        Kind.CAPTURE if capture else Kind.VOID,
        authorization.currency,
        authorization.transfers[0].ledger,
        0,
        legs,
        metadata,
        authorization.transaction_id,
        [t.id for t in authorization.transfers],
        amount if capture else 0,
    )
