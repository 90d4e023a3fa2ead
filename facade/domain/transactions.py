"""Transactions → engine transfers: the one place they are made.

Engine fields of each transfer
- code = the transaction type (CREDIT 1, DEBIT 2, TRANSFER 3). Captures and voids leave it zero: the
  engine copies the authorization's code, and the post/void flag tells them apart.
- user_data_128 = the transaction id (groups the legs; = H(client, idempotency key), facade.domain.ids).
- user_data_64 = the business time the caller gave (`occurred_at_ns`), 0 if none.
- user_data_32 = CRC-32 of `source`, so engine queries can filter by source.
- The correlation id, description, labels, idempotency key and client do not fit the engine: the
  metadata store keeps them durably (the canonical `body` below) before the transfers are submitted.
- Two-phase: authorize = pending transfers (optionally with a timeout); capture = post transfers
  (AMOUNT_MAX = the full amount); void = void transfers. Each references its pending leg.

Canonical body and idempotency: every transaction has a canonical JSON `body` holding its whole
payload (`TransactionBody`: kind, currency, ledger, timeout, legs, metadata, the authorization it
resolves). The transfers are a pure function of (client, key, body), so the store keeps the body only,
and `decode_transaction` rebuilds exactly the transfers that were submitted. The fingerprint is
BLAKE2b-128 of the body: the same key with a different fingerprint is IDEMPOTENCY_KEY_REUSED.
"""

from __future__ import annotations

import enum
import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from facade.domain.accounts import Currencies
from facade.domain.errors import ErrorKind, LedgerError, invalid
from facade.domain.ids import settlement_account_id, transaction_id, transfer_id
from facade.domain.validation import (
    CORRELATION_ID_LENGTH_MAX,
    DESCRIPTION_LENGTH_MAX,
    IDEMPOTENCY_KEY_LENGTH_MAX,
    LEGS_MAX,
    SOURCE_LENGTH_MAX,
    parse_amount,
    parse_id,
    validate_map,
    validate_text,
)
from facade.engine.types import AMOUNT_MAX, Transfer, TransferFlags

__all__ = [
    "BODY_VERSION",
    "BodySummary",
    "Kind",
    "Leg",
    "LegInput",
    "LegSpec",
    "MappedTransaction",
    "Metadata",
    "PostRequest",
    "ResolveRequest",
    "TransactionBody",
    "TransactionType",
    "decode_transaction",
    "map_post",
    "map_resolution",
    "parse_body_summary",
    "source_code",
]

BODY_VERSION = 1


class TransactionType(enum.IntEnum):
    """The transfer `code`: why money moved."""

    CREDIT = 1
    DEBIT = 2
    TRANSFER = 3
    CAPTURE = 4
    VOID = 5


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
        validate_text(self.source, "metadata.source", length_max=SOURCE_LENGTH_MAX)
        validate_text(self.correlation_id, "metadata.correlation_id", length_max=CORRELATION_ID_LENGTH_MAX)
        validate_text(self.description, "metadata.description", length_max=DESCRIPTION_LENGTH_MAX)
        if self.labels:
            validate_map(self.labels, "metadata.labels")
        if not 0 <= self.occurred_at_ns < 1 << 64:
            raise invalid("INVALID_TIMESTAMP", "metadata.occurred_at_ns out of range")

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


def source_code(source: str) -> int:
    return zlib.crc32(source.encode()) if source else 0


_FLAG_LINKED = int(TransferFlags.LINKED)
_FLAG_PENDING = int(TransferFlags.PENDING)
_FLAG_POST = int(TransferFlags.POST_PENDING_TRANSFER)
_FLAG_VOID = int(TransferFlags.VOID_PENDING_TRANSFER)
_json_string = json.encoder.encode_basestring_ascii
# Enum members and their values, looked up once: an enum's `.value` (and a member read off its class)
# is a Python-level descriptor call in 3.11, and these run per transaction or per leg.
_POST, _AUTHORIZE, _CAPTURE = Kind.POST, Kind.AUTHORIZE, Kind.CAPTURE
_CREDIT, _DEBIT, _TRANSFER = TransactionType.CREDIT, TransactionType.DEBIT, TransactionType.TRANSFER
_LEG_CODES: dict[TransactionType, int] = {leg_type: leg_type.value for leg_type in TransactionType}
_KIND_TEXTS: dict[Kind, str] = {kind: _json_string(kind.value) for kind in Kind}
"""A kind as the canonical body has it (a JSON string)."""


@dataclass(frozen=True, slots=True)
class TransactionBody:
    """A transaction's whole payload, what its transfers are a pure function of (with client and key);
    encoded as the canonical body the metadata store keeps."""

    kind: Kind
    currency: str
    ledger: int
    timeout: int
    """Seconds an authorization stays pending (0: the engine's default, never expires)."""
    legs: tuple[LegSpec, ...]
    metadata: Metadata
    authorization_id: int = 0
    """The authorization a capture or void resolves (0 for posts and authorizations)."""
    pending_ids: tuple[int, ...] = ()
    """The authorization's transfer ids, one per leg, that a capture or void resolves."""
    resolve_amount: int = 0
    """A capture's amount per leg (AMOUNT_MAX: the whole authorized amount); 0 for voids."""

    def encode(self) -> str:
        """json.dumps([...], separators=(",", ":")) of the body, byte for byte (a test holds it to that)."""
        return _encode_body(
            self.kind, self.currency, ledger=self.ledger, timeout=self.timeout, legs=self.legs,
            metadata=self.metadata, authorization_id=self.authorization_id, pending_ids=self.pending_ids,
            resolve_amount=self.resolve_amount,
        )  # fmt: skip

    @classmethod
    def decode(cls, body: str) -> TransactionBody:
        version, kind, currency, ledger, timeout, legs, metadata, authorization_id, pending_ids, resolve_amount = (
            json.loads(body)
        )
        assert version == BODY_VERSION, f"unknown body version {version}"
        return cls(
            kind=Kind(kind),
            currency=currency,
            ledger=ledger,
            timeout=timeout,
            legs=tuple(LegSpec(TransactionType(t), d, c, a) for t, d, c, a in legs),
            metadata=Metadata.from_canonical(metadata),
            authorization_id=authorization_id,
            pending_ids=tuple(pending_ids),
            resolve_amount=resolve_amount,
        )


def _encode_body(  # noqa: PLR0913  Private; keyword-only: a TransactionBody's fields, without making one.
    kind: Kind,
    currency: str,
    *,
    ledger: int,
    timeout: int,
    legs: tuple[LegSpec, ...],
    metadata: Metadata,
    authorization_id: int,
    pending_ids: tuple[int, ...],
    resolve_amount: int,
) -> str:
    """TransactionBody.encode of these fields, written out because this runs once per transaction on the
    hot path (map_post encodes without making a TransactionBody: its frozen __init__ cost ~0.9 µs)."""
    s = _json_string
    labels = ",".join(f"[{s(k)},{s(v)}]" for k, v in sorted(metadata.labels.items())) if metadata.labels else ""
    legs_text = ",".join(
        [f"[{_LEG_CODES[x.type]},{x.debit_account_id},{x.credit_account_id},{x.amount}]" for x in legs]
    )
    return (
        f"[{BODY_VERSION},{_KIND_TEXTS[kind]},{s(currency)},{ledger},{timeout},[{legs_text}],"
        f"[{s(metadata.source)},{s(metadata.correlation_id)},{s(metadata.description)},{metadata.occurred_at_ns},"
        f"[{labels}]],{authorization_id},[{','.join(map(str, pending_ids))}],{resolve_amount}]"
    )


def _build(client_id: str, idempotency_key: str, payload: TransactionBody, *, body: str) -> MappedTransaction:
    """Decoding a stored body and resolving an authorization: `_build_fields` of the payload's fields."""
    return _build_fields(
        client_id,
        idempotency_key,
        kind=payload.kind,
        currency=payload.currency,
        ledger=payload.ledger,
        timeout=payload.timeout,
        legs=payload.legs,
        metadata=payload.metadata,
        authorization_id=payload.authorization_id,
        pending_ids=payload.pending_ids,
        resolve_amount=payload.resolve_amount,
        body=body,
    )


def _build_fields(  # noqa: PLR0913  Private; keyword-only: a TransactionBody's fields and their encoding.
    client_id: str,
    idempotency_key: str,
    *,
    kind: Kind,
    currency: str,
    ledger: int,
    timeout: int,
    legs: tuple[LegSpec, ...],
    metadata: Metadata,
    authorization_id: int,
    pending_ids: tuple[int, ...],
    resolve_amount: int,
    body: str,
) -> MappedTransaction:
    """The one place transfers are made: mapping, resolving and decoding a stored body come through here.
    The fields are a TransactionBody's, `body` their canonical encoding."""
    tx_id = transaction_id(client_id, idempotency_key)
    user_data_64 = metadata.occurred_at_ns
    user_data_32 = source_code(metadata.source)
    last = len(legs) - 1
    transfers: list[Transfer] = []
    if kind is _POST or kind is _AUTHORIZE:
        assert not pending_ids and not authorization_id
        flags = _FLAG_PENDING if kind is _AUTHORIZE else 0
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
                    code=_LEG_CODES[leg.type],
                    flags=flags | _FLAG_LINKED if index < last else flags,
                )
            )
    else:
        assert len(pending_ids) == len(legs) and authorization_id
        flags = _FLAG_POST if kind is _CAPTURE else _FLAG_VOID
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
    return _build(client_id, idempotency_key, TransactionBody.decode(body), body=body)


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


@dataclass(frozen=True, slots=True)
class PostRequest:
    """A post or authorization as an edge received it (legs not validated yet)."""

    idempotency_key: str
    legs: Sequence[LegInput]
    metadata: Metadata
    authorize_only: bool = False
    timeout_seconds: int = 0


@dataclass(frozen=True, slots=True)
class ResolveRequest:
    """A capture or void of an authorization as an edge received it."""

    idempotency_key: str
    capture: bool
    """True: post (capture) the authorization; False: void it."""
    amount: str
    """A partial capture's amount (minor units); empty for the whole authorization and for voids."""
    metadata: Metadata


@dataclass(frozen=True, slots=True)
class _LegFieldNames:
    """The field names an error about leg `index` reports (made once, not per leg mapped)."""

    amount: str
    account_id: str
    from_account_id: str
    to_account_id: str


_LEG_FIELDS = tuple(
    _LegFieldNames(
        f"legs[{i}].amount", f"legs[{i}].account_id", f"legs[{i}].from_account_id", f"legs[{i}].to_account_id"
    )
    for i in range(LEGS_MAX)
)


def map_post(client_id: str, request: PostRequest, *, currencies: Currencies) -> MappedTransaction:
    idempotency_key, legs, metadata = request.idempotency_key, request.legs, request.metadata
    authorize_only, timeout_seconds = request.authorize_only, request.timeout_seconds
    validate_text(idempotency_key, "idempotency_key", length_max=IDEMPOTENCY_KEY_LENGTH_MAX, required=True)
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
        names = _LEG_FIELDS[index]
        amount = parse_amount(leg.amount, names.amount)
        leg_type = leg.type
        if leg_type == _CREDIT:
            credit = parse_id(leg.account_id, names.account_id)
            specs.append(LegSpec(_CREDIT, settlement_account_id(currency_code), credit, amount))
        elif leg_type == _DEBIT:
            debit = parse_id(leg.account_id, names.account_id)
            specs.append(LegSpec(_DEBIT, debit, settlement_account_id(currency_code), amount))
        elif leg_type == _TRANSFER:
            debit = parse_id(leg.from_account_id, names.from_account_id)
            credit = parse_id(leg.to_account_id, names.to_account_id)
            if debit == credit:
                raise invalid("SAME_ACCOUNT", f"legs[{index}]: from and to accounts are the same")
            specs.append(LegSpec(_TRANSFER, debit, credit, amount))
        else:
            raise invalid("INVALID_LEG_TYPE", f"legs[{index}].type must be CREDIT, DEBIT or TRANSFER")
    # The TransactionBody's fields, encoded and built without making one (see _encode_body).
    kind = _AUTHORIZE if authorize_only else _POST
    ledger, leg_specs = currency.ledger, tuple(specs)
    body = _encode_body(
        kind, currency_code, ledger=ledger, timeout=timeout_seconds, legs=leg_specs, metadata=metadata,
        authorization_id=0, pending_ids=(), resolve_amount=0,
    )  # fmt: skip
    return _build_fields(
        client_id,
        idempotency_key,
        kind=kind,
        currency=currency_code,
        ledger=ledger,
        timeout=timeout_seconds,
        legs=leg_specs,
        metadata=metadata,
        authorization_id=0,
        pending_ids=(),
        resolve_amount=0,
        body=body,
    )


def map_resolution(client_id: str, request: ResolveRequest, *, authorization: MappedTransaction) -> MappedTransaction:
    """A capture (post) or void of an authorization: one resolving transfer per authorized leg."""
    idempotency_key, capture, amount_text, metadata = (
        request.idempotency_key,
        request.capture,
        request.amount,
        request.metadata,
    )
    validate_text(idempotency_key, "idempotency_key", length_max=IDEMPOTENCY_KEY_LENGTH_MAX, required=True)
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
    payload = TransactionBody(
        kind=Kind.CAPTURE if capture else Kind.VOID,
        currency=authorization.currency,
        ledger=authorization.transfers[0].ledger,
        timeout=0,
        legs=legs,
        metadata=metadata,
        authorization_id=authorization.transaction_id,
        pending_ids=tuple(t.id for t in authorization.transfers),
        resolve_amount=amount if capture else 0,
    )
    return _build(client_id, idempotency_key, payload, body=payload.encode())
