"""The JSON gateway's wire format: Pydantic models of the ledger.v1 messages, and the one conversion.

The JSON is the proto3 JSON mapping of the gRPC messages with their proto field names (snake_case):
- money, balances and ids are decimal strings (u128 is exact in no JSON number), and so are the 64-bit
  nanosecond timestamps (`committed_at_ns`, `created_at_ns`, `occurred_at_ns`): beyond 2^53 a
  JavaScript number would round them. A JSON number where a decimal string belongs is rejected.
- enums are the proto enum value names (`LEG_TYPE_CREDIT`, `TRANSACTION_STATUS_POSTED`, ...).
So the gateway, an Envoy/grpc-gateway transcoder and `grpcurl` all speak the same JSON.

Conversion is a single path and reuses the gRPC edge: a request model → `json_format.ParseDict` → the
ledger_pb2 request → facade.api.servicer's converters (post_request, metadata_from) → LedgerService;
a result → the servicer's message builders (transaction_message, account_message, ...) →
`json_format.MessageToDict` → the response model. Nothing here re-interprets the domain: validation
of amounts, ids, currencies and idempotency is the mapping module's, with the same reasons as gRPC.

Request models are strict and forbid unknown fields: a misspelt `authorize_only` must not silently
move money.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from facade.domain.errors import ErrorKind, LedgerError
from facade.domain.times import TIME_PATTERN, TIME_TEXT_LENGTH_MAX
from facade.domain.validation import (
    CORRELATION_ID_LENGTH_MAX,
    DESCRIPTION_LENGTH_MAX,
    EXTERNAL_REFERENCE_LENGTH_MAX,
    IDEMPOTENCY_KEY_LENGTH_MAX,
    LABELS_COUNT_MAX,
    LEGS_MAX,
    OWNER_LENGTH_MAX,
    SOURCE_LENGTH_MAX,
)
from facade.service import BATCH_TRANSACTIONS_MAX

U128_PATTERN = r"^(0|[1-9][0-9]{0,38})$"
U64_PATTERN = r"^(0|[1-9][0-9]{0,19})$"
SIGNED_PATTERN = r"^-?(0|[1-9][0-9]{0,38})$"
HEX_ID_PATTERN = r"^[0-9a-f]{32}$"
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
M = TypeVar("M", bound=Message)

# Documented (pattern in the OpenAPI schema) but validated by the mapping module, so a malformed
# amount or id gets the same reason (INVALID_AMOUNT, INVALID_ID) over HTTP as over gRPC.
Amount = Annotated[
    str,
    Field(
        description="Minor units (cents for USD, yen for JPY) as a decimal string: > 0 and < 2^128-1, "
        "digits only, no sign or leading zeros. Never a JSON number.",
        json_schema_extra={"pattern": r"^[1-9][0-9]{0,38}$"},
        examples=["1050"],
    ),
]
AccountId = Annotated[
    str,
    Field(
        description="An account id: u128 as a decimal string.",
        json_schema_extra={"pattern": U128_PATTERN},
        examples=["123427150129743620338839428126734437612"],
    ),
]
OptionalAccountId = Annotated[
    str,
    Field(
        description="An account id (u128, decimal string); empty when not applicable.",
        json_schema_extra={"pattern": f"^$|{U128_PATTERN}"},
    ),
]
TransactionId = Annotated[
    str,
    Field(description="A transaction id: 32 lowercase hex digits.", examples=["5f0c6e0b3d2a4c1e9b8a7f6e5d4c3b2a"]),
]
NanosString = Annotated[
    str,
    Field(
        description="Nanoseconds since the Unix epoch (u64) as a decimal string.",
        pattern=U64_PATTERN,
        examples=["1764052518000000000"],
    ),
]


def _u64_decimal(text: str) -> str:
    """The pattern admits 20 digits; a u64 holds 2^64-1 at most (ParseDict would fail later, as a 500)."""
    if int(text) > UINT64_MAX:
        raise ValueError(f"must be at most {UINT64_MAX} (u64)")
    return text


RFC3339 = Annotated[
    str,
    Field(
        description="The same time as RFC 3339 in UTC, exact to the nanosecond; empty when the time is 0 (none).",
        examples=["2026-11-25T17:00:00.000000001Z"],
    ),
]
RequestRFC3339 = Annotated[
    str,
    Field(
        description="A time as RFC 3339 (any offset, up to nine fraction digits), instead of (or naming the same "
        "nanosecond as) the field's engine nanoseconds; a bad one is INVALID_TIMESTAMP.",
        examples=["2026-11-25T17:00:00.000000001Z"],
        # Documented, validated by facade.domain.times (INVALID_TIMESTAMP with metadata.field, as over gRPC).
        json_schema_extra={"pattern": TIME_PATTERN, "maxLength": TIME_TEXT_LENGTH_MAX},
    ),
]
RequestNanosString = Annotated[NanosString, AfterValidator(_u64_decimal)]
"""A u64 nanosecond timestamp in a request: the pattern, then the range."""
Labels = Annotated[
    dict[str, str],
    Field(description=f"At most {LABELS_COUNT_MAX} entries, keys and values at most 128 bytes."),
]

LegType = Literal["LEG_TYPE_CREDIT", "LEG_TYPE_DEBIT", "LEG_TYPE_TRANSFER"]
AccountType = Literal["ACCOUNT_TYPE_NO_OVERDRAFT", "ACCOUNT_TYPE_OVERDRAFT_ALLOWED"]
TransactionStatus = Literal["TRANSACTION_STATUS_POSTED", "TRANSACTION_STATUS_AUTHORIZED", "TRANSACTION_STATUS_VOIDED"]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Response(BaseModel):
    model_config = ConfigDict(strict=True)


# ------------------------------------------------------------------------------------------------
# Shared by requests and responses.


class Leg(_Request):
    """One movement of money; all legs of a transaction are atomic and in one currency."""

    type: LegType = Field(
        description="LEG_TYPE_CREDIT: money into `account_id` from the currency's settlement account. "
        "LEG_TYPE_DEBIT: money out of `account_id` to it. LEG_TYPE_TRANSFER: from `from_account_id` to "
        "`to_account_id`."
    )
    account_id: OptionalAccountId = Field(default="", description="CREDIT and DEBIT: the customer account.")
    from_account_id: OptionalAccountId = Field(default="", description="TRANSFER: the source account.")
    to_account_id: OptionalAccountId = Field(default="", description="TRANSFER: the destination account.")
    amount: Amount
    currency: str = Field(
        default="", description="ISO 4217 code; must equal every account's currency.", examples=["USD"]
    )


class TransactionMetadata(_Request):
    source: str = Field(
        default="", description=f"The system the request comes from (e.g. checkout); at most {SOURCE_LENGTH_MAX} bytes."
    )
    correlation_id: str = Field(
        default="",
        description=f"The caller's id linking this to its own records; at most {CORRELATION_ID_LENGTH_MAX} bytes.",
    )
    description: str = Field(default="", description=f"Human-readable; at most {DESCRIPTION_LENGTH_MAX} bytes.")
    labels: Labels = Field(default_factory=dict)
    occurred_at_ns: RequestNanosString = Field(
        default="0", description="When the business event happened (ns since the Unix epoch, decimal); 0 = not given."
    )
    occurred_at_rfc3339: RequestRFC3339 = ""


# ------------------------------------------------------------------------------------------------
# Requests.


class CreateAccountRequest(_Request):
    # Fields the service requires default to proto3's empty values, as over gRPC: the mapping then refuses
    # an absent one with the same reason on both edges (MISSING_FIELD, UNKNOWN_CURRENCY). Enums stay required:
    # their zero value is no valid choice to document, so an absent `type` is MISSING_FIELD here.
    currency: str = Field(default="", description="ISO 4217 code (e.g. USD); must be configured on the service.")
    external_reference: str = Field(
        default="",
        description="The caller's identifier for the account (unique per client); makes creation idempotent. "
        f"At most {EXTERNAL_REFERENCE_LENGTH_MAX} bytes.",
    )
    owner: str = Field(default="", description=f"The owner in the caller's systems; at most {OWNER_LENGTH_MAX} bytes.")
    type: AccountType = Field(
        description="ACCOUNT_TYPE_NO_OVERDRAFT: debits never exceed credits. ACCOUNT_TYPE_OVERDRAFT_ALLOWED: "
        "no balance constraint."
    )
    metadata: Labels = Field(default_factory=dict)


class PostTransactionRequest(_Request):
    idempotency_key: str = Field(
        default="",
        description=f"Required, at most {IDEMPOTENCY_KEY_LENGTH_MAX} bytes, unique per client and transaction. A "
        "retry with the same key and payload returns the original result (deduplicated=true); the same key "
        "with a different payload fails with IDEMPOTENCY_KEY_REUSED.",
    )
    legs: list[Leg] = Field(
        default_factory=list,  # Absent is empty (proto3): the mapping refuses it as over gRPC (INVALID_LEGS).
        description=f"1 to {LEGS_MAX} legs, all in one currency; atomic.",
    )
    metadata: TransactionMetadata = Field(default_factory=TransactionMetadata)
    authorize_only: bool = Field(
        default=False, description="Two-phase: place a hold (authorize) instead of moving money; capture or void it."
    )
    authorization_timeout_seconds: int = Field(
        default=0, ge=0, le=UINT32_MAX, description="With authorize_only: seconds until the hold expires (0 = never)."
    )


class PostTransactionsRequest(_Request):
    transactions: list[PostTransactionRequest] = Field(
        description=f"At most {BATCH_TRANSACTIONS_MAX} independent transactions; one result per item, in order."
    )


class CaptureTransactionRequest(_Request):
    idempotency_key: str = Field(
        default="", description="Required; identifies this capture (retries return the same result)."
    )
    amount: str = Field(
        default="",
        description="Minor units to capture (decimal string); empty = the full authorized amount. Partial captures "
        "are for single-leg authorizations.",
        json_schema_extra={"pattern": r"^$|^[1-9][0-9]{0,38}$"},
    )
    metadata: TransactionMetadata = Field(default_factory=TransactionMetadata)


class VoidTransactionRequest(_Request):
    idempotency_key: str = Field(
        default="", description="Required; identifies this void (retries return the same result)."
    )
    metadata: TransactionMetadata = Field(default_factory=TransactionMetadata)


# ------------------------------------------------------------------------------------------------
# Responses.


class Balance(_Response):
    currency: str
    posted: str = Field(description="Credits minus debits posted (signed decimal string).", pattern=SIGNED_PATTERN)
    pending_debits: str = Field(description="Held by authorizations (decimal string).", pattern=U128_PATTERN)
    pending_credits: str = Field(description="Incoming authorizations (decimal string).", pattern=U128_PATTERN)
    available: str = Field(
        description="What can be spent now: posted minus pending debits (signed; negative only for overdraft "
        "accounts).",
        pattern=SIGNED_PATTERN,
    )
    debits_posted: str = Field(description="Raw engine balance, for reconciliation.", pattern=U128_PATTERN)
    credits_posted: str = Field(description="Raw engine balance, for reconciliation.", pattern=U128_PATTERN)


class Account(_Response):
    account_id: AccountId
    currency: str
    external_reference: str
    owner: str
    type: AccountType
    metadata: dict[str, str]
    balance: Balance
    created_at_ns: NanosString = Field(description="Engine timestamp of creation (ns since the Unix epoch, decimal).")
    closed: bool
    created_at_rfc3339: RFC3339


class ListAccountsResponse(_Response):
    accounts: list[Account]
    next_page_token: str = Field(description="Pass as page_token for the next page; empty on the last page.")


class Transaction(_Response):
    transaction_id: str = Field(description="Derived from (client, idempotency key): 32 hex digits.")
    idempotency_key: str
    status: TransactionStatus = Field(
        description="POSTED: money moved (or a capture posted); AUTHORIZED: a hold awaiting capture or void; "
        "VOIDED: a void released a hold."
    )
    legs: list[Leg]
    metadata: TransactionMetadata
    committed_at_ns: NanosString = Field(
        description="Engine timestamp (ns since the Unix epoch, decimal): unique, orders all transactions."
    )
    deduplicated: bool = Field(description="True when this response replays an earlier identical request.")
    authorization_id: str = Field(description="For captures and voids: the authorization they resolve; else empty.")
    currency: str
    committed_at_rfc3339: RFC3339


class Error(_Response):
    """Every error response, and each failed item of a batch."""

    code: str = Field(description="The gRPC status name (e.g. FAILED_PRECONDITION).", examples=["FAILED_PRECONDITION"])
    reason: str = Field(
        description="Machine-readable; the same as the gRPC google.rpc.ErrorInfo reason.",
        examples=["INSUFFICIENT_FUNDS"],
    )
    message: str
    metadata: dict[str, str] = Field(description="Details, e.g. which leg or field; retry_after_ms when throttled.")


class TransactionResult(_Response):
    """Exactly one of `transaction` and `error`."""

    transaction: Transaction | None = None
    error: Error | None = None


class PostTransactionsResponse(_Response):
    results: list[TransactionResult] = Field(description="One per requested transaction, in order.")


class Entry(_Response):
    transaction_id: str
    is_debit: bool = Field(description="Debit (money out of this account) or credit (into it).")
    amount: str = Field(pattern=U128_PATTERN, description="Minor units, decimal string.")
    currency: str
    counterparty_account_id: str = Field(pattern=U128_PATTERN)
    status: TransactionStatus
    committed_at_ns: NanosString
    transfer_id: str = Field(pattern=U128_PATTERN, description="The engine transfer (u128, decimal string).")
    committed_at_rfc3339: RFC3339


class ListAccountEntriesResponse(_Response):
    entries: list[Entry]
    next_page_token: str = Field(description="Pass as page_token for the next page; empty on the last page.")


# ------------------------------------------------------------------------------------------------
# The conversion.


def to_message(model: BaseModel, message: M) -> M:
    """A validated request model → the ledger_pb2 request of the same shape. The models are stricter
    than the messages, so a ParseError is a gap in them: still the caller's input, still a 400."""
    try:
        json_format.ParseDict(model.model_dump(), message)
    except json_format.ParseError as error:
        raise LedgerError(ErrorKind.INVALID, "INVALID_REQUEST", "a field is out of range for its type") from error
    return message


def from_message(message: Message) -> dict[str, Any]:
    """A ledger_pb2 message → its proto3 JSON (proto field names, every field present); FastAPI checks it
    against the route's response model."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
